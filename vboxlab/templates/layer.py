"""The ``layer`` recipe: a template made of a qcow2 layer over its base template's disk.

The base is booted once, with the new layer as its (only writable) disk; what the
definition adds is applied over the command channel: the Debian packages (installed by
apt from the base's own sources, at native speed in a chroot over the base on the host
when the base was built here, see :mod:`layer_stage`; else by apt in the guest), the
definition's files, services enabled and started, commands run once; the
guest is cleaned of everything one VM must not pass to the next (host keys, machine
id, apt's downloads and lists, logs) and powers off. The layer, whose header names
the base's disk by a relative path (``../../NAME/VERSION/disk.qcow2``), is compressed
(zstd clusters) and becomes the template's disk; kernel and initrd are the base's
(hard links: no copy). The base is never written: QEMU opens it read-only under the
layer. The manifest records the base's name, version and file digests, so a base
rebuilt or replaced since is noticed before anything boots.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.agent import GUEST_PATH
from vboxlab.errors import BuildError
from vboxlab.hosttools import require, run
from vboxlab.templates import layer_stage
from vboxlab.templates.chain import backing_name, base_record
from vboxlab.templates.definition import Template
from vboxlab.templates.initramfs import Progress
from vboxlab.templates.layer_stage import (
    StagedChanges,
    apply_commands,
    can_stage_natively,
    stage_packages,
)

if TYPE_CHECKING:
    from vboxlab.machine import Machine
    from vboxlab.templates.repository import BuiltTemplate, TemplateRepository

RECIPE_VERSION = "1"
#: memory of the build VM (MiB): apt's downloads and lists and the packages' changes live in
#: a tmpfs, not on the layer (QEMU takes from the host only what the guest touches)
BUILD_MEMORY = 3072
#: how much of the build VM's memory each tmpfs may use (%)
TMPFS_SHARE = 75
#: seconds for each step in the guest (package installs under TCG take minutes)
STEP_TIMEOUT = 1800
#: where apt keeps downloads and lists during the build: RAM, so the layer never holds them
APT_TMPFS = ("/var/cache/apt/archives", "/var/lib/apt/lists")
#: a tmpfs in the build VM for what is copied in
STAGING = "/run/vboxlab-layer"
#: what no VM may inherit from the build VM
CLEAN_UP = """\
set -e
apt-get clean
for d in {tmpfs}; do umount "$d" 2>/dev/null || true; done
rmdir {staging}
rm -f /etc/ssh/ssh_host_* /etc/ssh/authorized_keys /root/.bash_history
: > /etc/machine-id
rm -f /var/lib/systemd/random-seed /var/lib/dbus/machine-id
rm -rf /var/log/journal/* /tmp/* /var/tmp/*
echo {label} > /etc/vboxlab/template
echo {name} > /etc/hostname
rm -f {agent}
sync
"""


def inputs_digest(template: Template, base: BuiltTemplate) -> str:
    """What a layer's build depends on: this recipe, its definition folder and its base."""
    digest = hashlib.sha256()
    digest.update(f"layer-recipe-{RECIPE_VERSION}\n".encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(Path(layer_stage.__file__).read_bytes())
    digest.update(template.source_digest().encode())
    digest.update(repr(sorted(base_record(base)["files"].items())).encode())
    return digest.hexdigest()


def build_layer(template: Template, base: BuiltTemplate, scratch: Path,
                repository: TemplateRepository, report: Progress) -> dict[str, Any]:
    """Build ``template``'s layer over ``base`` into ``scratch``; extra manifest fields."""
    from vboxlab.lab import Lab

    qemu_img = require("qemu-img", "to make template layers")
    build = template.definition.build
    label = f"{template.name} {template.version}"
    base_label = f"{base.template.name} {base.template.version}"
    if base.firmware != "kernel":
        raise BuildError(f"{template.name}: its base {base_label} boots its own bootloader; "
                         "layers are built on templates booted with their kernel")
    files = template.folder / build.files
    growth = build.disk_size_mb if "disk_size_mb" in build.model_fields_set else 0
    # a lab like any other (in the state folder: `vboxlab clean` finds it if we are killed)
    with Lab(repository=repository, boot_timeout=300) as lab, \
            ThreadPoolExecutor(1, thread_name_prefix="stage") as host:
        staging: Future[StagedChanges] | None = None
        if build.packages:
            why_not = can_stage_natively(base)
            if why_not is None:  # on the host while the base boots
                staging = host.submit(stage_packages, base, build.packages, scratch / "stage",
                                      report)
            else:
                report(f"the packages are installed in the guest (slower): {why_not}")
        report(f"booting its base {base_label} with the new layer as its disk")
        memory = max(BUILD_MEMORY, template.definition.resources.memory)
        vm = lab.vm("build", template=f"{base.template.name}@{base.template.version}",
                    memory=memory, cpus=max(2, template.definition.resources.cpus),
                    restrict=False)
        if growth:
            report(f"growing the root filesystem by {growth} MiB")
            _grow(vm, growth)
        # apt's downloads and what is copied in live in memory: the layer never holds them
        _guest(vm, f"mkdir -p {STAGING} && " + " && ".join(
            f"mount -t tmpfs -o size={TMPFS_SHARE}% tmpfs {d}" for d in (*APT_TMPFS, STAGING))
            + f" && chmod 700 {STAGING}", "putting apt's downloads in memory")
        staged = staging.result() if staging is not None else None
        if staged is not None and staged.archive.stat().st_size > \
                (memory << 20) * TMPFS_SHARE // 100 - (256 << 20):
            raise BuildError(f"{template.name}: the packages' changes "
                             f"({staged.archive.stat().st_size >> 20} MiB) do not fit in the "
                             f"build VM's memory ({memory} MiB); give the layer more "
                             "[resources] memory or split it into two layers")
        before = set(_installed(vm))
        if staged is not None:
            report(f"applying the packages' changes ({staged.archive.stat().st_size >> 20} "
                   f"MiB, {len(staged.deleted)} paths deleted)")
            deleted = scratch / "stage" / "deleted"
            deleted.write_bytes(b"".join(p.encode() + b"\0" for p in staged.deleted))
            vm.copy_to(staged.archive, f"{STAGING}/changes.tar")
            vm.copy_to(deleted, f"{STAGING}/deleted")
            _guest(vm, apply_commands(staged, f"{STAGING}/changes.tar", f"{STAGING}/deleted"),
                   "applying the packages' changes")
            shutil.rmtree(scratch / "stage")
        elif build.packages:
            report(f"installing {len(build.packages)} Debian packages: "
                   f"{', '.join(build.packages)}")
            _guest(vm, "apt-get update -q", "apt-get update")
            _guest(vm, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                   "--no-install-recommends " + shlex.join(build.packages),
                   "installing " + ", ".join(build.packages))
        if files.is_dir():
            report(f"copying {files.name}/ into the system")
            _copy_tree(vm, files, lab.dir)
        if build.services:  # started too: the commands may need them
            report(f"enabling and starting {', '.join(build.services)}")
            _guest(vm, "systemctl enable --now --quiet -- " + shlex.join(build.services),
                   "enabling the services")
        for number, command in enumerate(build.commands, 1):
            report(f"command {number}/{len(build.commands)}: {command}")
            _guest(vm, command, f"command {number} of [build] commands ({command!r})")
        installed = _installed(vm)
        report("cleaning up and powering off")
        _guest(vm, CLEAN_UP.format(tmpfs=" ".join((*APT_TMPFS, STAGING)), staging=STAGING,
                                   label=shlex.quote(label),
                                   name=shlex.quote(template.name),
                                   agent=shlex.quote("/" + GUEST_PATH.lstrip("/"))),
               "cleaning the system")
        vm.stop(timeout=300)
        console = vm.console_log.read_text(errors="replace")
        if "reboot: Power down" not in console[-4096:]:
            raise BuildError(f"{template.name}: the build VM did not power off cleanly; its "
                             f"console ends:\n{console[-1500:]}")
        layer = scratch / "disk.qcow2"
        shutil.move(str(_overlay_of(vm)), layer)
    run([qemu_img, "rebase", "-q", "-u", "-f", "qcow2", "-F", "qcow2", "-b",
         backing_name(base), str(layer)], what=f"pointing {label} at {base_label}",
        error=BuildError)
    # what the guest wrote, compressed (zstd clusters: a third of the size, read fast)
    compact = scratch / "disk.compact.qcow2"
    run([qemu_img, "convert", "-q", "-c", "-O", "qcow2", "-o", "compression_type=zstd",
         "-f", "qcow2", "-B", backing_name(base), "-F", "qcow2", str(layer), str(compact)],
        what=f"compressing {label}'s layer", error=BuildError, timeout=1800)
    compact.replace(layer)
    run([qemu_img, "check", "-q", "-f", "qcow2", str(layer)], what=f"checking {label}'s layer",
        error=BuildError)
    for name in ("vmlinuz", "initrd.cpio"):
        _link_or_copy(base.folder / name, scratch / name)
    added = sorted(set(installed) - before)
    return {"recipe": "layer", "base": base_record(base), "packages": installed,
            "installed_packages": len(installed), "packages_added": added,
            "layer": {"packages": list(build.packages), "files": build.files
                      if files.is_dir() else None, "commands": list(build.commands),
                      "services": list(build.services), "grown_mb": growth},
            "layer_bytes": layer.stat().st_size,
            **({"vm_files": base.manifest["vm_files"]} if "vm_files" in base.manifest else {})}


def _guest(vm: Machine, command: str, what: str) -> str:
    result = vm.execute(command, timeout=STEP_TIMEOUT)
    if result.rc != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise BuildError(f"{vm.name}: {what} failed (exit status {result.rc}):\n"
                         f"{output}")
    return result.stdout


def _installed(vm: Machine) -> list[str]:
    out = _guest(vm, "dpkg-query -W -f '${db:Status-Abbrev} ${Package}=${Version}\\n'",
                 "listing the installed packages")
    return sorted(line.split()[1] for line in out.splitlines()
                  if line.startswith("ii ") and len(line.split()) == 2)


def _grow(vm: Machine, megabytes: int) -> None:
    """Make the disk (the layer) bigger and the root filesystem with it, online."""
    from vboxlab.providers.qemu_argv import DISK_NODE

    handle: Any = vm.handle
    nodes = handle.qmp("query-named-block-nodes")
    size = next(n["image"]["virtual-size"] for n in nodes if n.get("node-name") == DISK_NODE)
    handle.qmp("block_resize", **{"node-name": DISK_NODE, "size": size + (megabytes << 20)})
    _guest(vm, "resize2fs /dev/vda", "growing the root filesystem")


def _overlay_of(vm: Machine) -> Path:
    overlay = getattr(vm.handle, "overlay", None)
    if not isinstance(overlay, Path) or not overlay.is_file():
        raise BuildError(f"{vm.name}: the build VM's disk was not found")
    return overlay


def _copy_tree(vm: Machine, folder: Path, scratch: Path) -> None:
    """``folder``'s files into the guest's root, owned by root, modes and links kept."""
    archive = scratch / "layer-files.tar"
    with tarfile.open(archive, "w") as tar:
        for path in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=str(path.relative_to(folder)))
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path.is_file() and not path.is_symlink():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
    vm.copy_to(archive, f"{STAGING}/files.tar")
    _guest(vm, f"tar -xpf {STAGING}/files.tar -C / --no-overwrite-dir && "
           f"rm -f {STAGING}/files.tar", f"unpacking {folder.name}/")


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)

