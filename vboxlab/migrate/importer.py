"""``vboxlab templates import-image``: a disk made elsewhere becomes a versioned template.

The image (qcow2, vmdk, vdi, vhdx, raw when asked, or an OVA holding one of
them) is checked before anything reads it as an image (see
:mod:`vboxlab.migrate.images`), converted to a standalone qcow2 in a scratch
folder, and installed through the same checks as an imported archive. Such a
disk boots with a kernel and initrd: those of an installed template given with
``--like`` (which also lends its boot command line and how the guest is
reached), or files given with ``--kernel``/``--initrd``. CPUs and memory come
from the OVA's descriptor, the ``--like`` template, or the options. The
template is marked as coming from outside (its guests reach nothing beyond the
lab unless a lab says otherwise).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vboxlab import __version__
from vboxlab.errors import ConfigError, UntrustedImage
from vboxlab.migrate.images import Progress, check_image, convert, detect_format
from vboxlab.migrate.ovf import read_ova
from vboxlab.templates.archive import (
    FREE_SPACE_RESERVE,
    ArchiveError,
    ImportResult,
    install_verified,
    new_scratch,
)
from vboxlab.templates.definition import TemplateDefinition
from vboxlab.templates.repository import BuiltTemplate, TemplateRepository, file_sha256


@dataclass(frozen=True)
class BootFiles:
    """How an imported disk boots: kernel, initrd, command line, access (from ``like``); or,
    with ``firmware`` ``bios``/``uefi``, by its own bootloader with a NoCloud seed for its
    keys (logging in as ``user``)."""

    kernel: Path | None = None
    initrd: Path | None = None
    like: BuiltTemplate | None = None
    cmdline: str | None = None
    firmware: str = "kernel"
    user: str = "root"


def import_image(image: Path, name: str, version: str, repository: TemplateRepository,
                 boot: BootFiles, *, image_format: str | None = None,
                 memory: int | None = None, cpus: int | None = None,
                 description: str | None = None,
                 progress: Progress | None = None) -> ImportResult:
    """Make ``image`` the template ``name`` ``version`` in ``repository``."""
    image = Path(image)
    if not image.is_file():
        raise ConfigError(f"{image}: no such file")
    if boot.firmware not in ("kernel", "bios", "uefi"):
        raise ConfigError(f"--firmware {boot.firmware!r}: choose bios or uefi")
    if boot.firmware == "kernel":
        for label, path in (("--kernel", boot.kernel), ("--initrd", boot.initrd)):
            if path is None or not path.is_file():
                raise ConfigError(f"{label} {path}: no such file (a disk without its own "
                                  "bootloader boots a kernel and initrd: --like TEMPLATE, or "
                                  "--kernel and --initrd; a disk that boots itself: "
                                  "--firmware bios|uefi)")
    detected = detect_format(image)
    fmt = image_format or detected
    if image_format is not None and image_format != "raw" and detected != image_format:
        raise UntrustedImage(f"{image}: --format {image_format} given but its first bytes say "
                             f"{detected or 'none of the formats vboxlab reads'}")
    if image_format == "raw" and detected not in (None,):
        raise UntrustedImage(f"{image}: --format raw given but it is a {detected} image")
    if fmt is None:
        raise ConfigError(f"{image}: not an image vboxlab recognises (qcow2, vmdk, vdi, vhdx, "
                          "ova); for a raw disk say --format raw")
    needed = image.stat().st_size * (2 if fmt == "ova" else 1)
    repository.images.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(repository.images).free - FREE_SPACE_RESERVE
    if needed > free:
        raise ConfigError(f"{image}: importing needs about {needed / 1e6:.0f} MB and "
                          f"{repository.images} has {max(free, 0) / 1e6:.0f} MB to spare")
    scratch = new_scratch(repository)
    try:
        source, source_format = image, fmt
        if fmt == "ova":
            machine, source = read_ova(image, scratch)
            source_format = detect_format(source) or "none"
            if source_format != "vmdk":
                raise UntrustedImage(f"{image}: its disk {machine.disk_file} is not a VMDK")
            memory = memory or machine.memory_mib
            cpus = cpus or machine.cpus
        check_image(source, source_format, what=str(image))
        convert(source, source_format, scratch / "disk.qcow2", "qcow2", progress=progress)
        if source != image:
            source.unlink()
        if boot.kernel is not None and boot.initrd is not None and boot.firmware == "kernel":
            shutil.copyfile(boot.kernel, scratch / "vmlinuz")
            shutil.copyfile(boot.initrd, scratch / "initrd.cpio")
        manifest = _manifest(image, fmt, name, version, boot, memory, cpus,
                             description)
        try:
            files = {p.name: file_sha256(p) for p in sorted(scratch.iterdir()) if p.is_file()}
            return install_verified(scratch, {**manifest, "files": files}, files, repository,
                                    source=str(image))
        except ArchiveError as exc:
            raise ConfigError(str(exc)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _manifest(image: Path, fmt: str, name: str, version: str, boot: BootFiles,
              memory: int | None, cpus: int | None,
              description: str | None) -> dict[str, object]:
    like = boot.like.template.definition if boot.like is not None else None
    base: dict[str, Any] = like.model_dump(mode="json") if like is not None else {}
    resources = dict(base.get("resources") or {})
    if memory is not None:
        resources["memory"] = memory
    if cpus is not None:
        resources["cpus"] = cpus
    boot_section = dict(base.get("boot") or {})
    if boot.cmdline is not None:
        boot_section["cmdline"] = boot.cmdline
    boot_section["firmware"] = boot.firmware
    if boot.firmware != "kernel":  # reached over SSH with the keys of its NoCloud seed
        base["access"] = {**dict(base.get("access") or {}), "user": boot.user,
                          "channels": ["ssh"]}
    image_digest = file_sha256(image)
    definition = {
        **base, "name": name, "version": version,
        "description": description or f"imported from {image.name} ({fmt})",
        "resources": resources, "boot": boot_section, "build": {"recipe": "import"},
    }
    try:
        checked = TemplateDefinition.model_validate(definition)
    except Exception as exc:
        raise ConfigError(f"template {name} {version}: {exc}") from None
    # the like template's initrd reads its VMs' files from fw_cfg: so does the import's copy
    shares_initrd = boot.like is not None and boot.initrd == boot.like.initrd
    extra = {k: v for k, v in (boot.like.manifest.items() if boot.like else ())
             if boot.firmware == "kernel" and (k in ("kernel_version", "modules") or
                                               (k == "vm_files" and shares_initrd))}
    return {
        "name": name, "version": version, "description": checked.description,
        "inputs_digest": image_digest,
        "source": {"image": image.name, "format": fmt, "sha256": image_digest,
                   "like": f"{boot.like.template.name}@{boot.like.template.version}"
                   if boot.like else None},
        "packages": [],
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "builder": f"vboxlab {__version__}",
        "origin": f"image-{image_digest[:16]}",
        "disk_format": "qcow2",
        "definition": checked.model_dump(mode="json"),
        **extra,
    }
