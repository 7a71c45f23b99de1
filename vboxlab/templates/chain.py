"""A layer's chain of disks: how a layer names its base, and the checks before it boots.

A layered template's ``disk.qcow2`` is a qcow2 layer whose header names its base's
disk as ``../../NAME/VERSION/disk.qcow2`` (relative to the layer's folder, so the
cache can move). QEMU never follows that name: each VM opens the chain explicitly,
read-only, from the paths the repository resolved and checked here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import TemplateNotBuilt, UntrustedImage
from vboxlab.names import is_valid_name
from vboxlab.templates.trust import check_disk

if TYPE_CHECKING:
    from vboxlab.templates.repository import BuiltTemplate, TemplateRepository

_VERSION = re.compile(r"^\d{1,9}\.\d{1,9}\.\d{1,9}$")


def backing_name(base: BuiltTemplate) -> str:
    """How a layer's header names its base's disk: relative to the layer's own folder."""
    return f"../../{base.template.name}/{base.template.version}/{base.disk.name}"


def base_record(base: BuiltTemplate) -> dict[str, Any]:
    """What a layer's manifest says of its base: enough to find it and to notice a change."""
    return {"name": base.template.name, "version": base.template.version,
            "files": dict(base.manifest.get("files", {}))}


def check_template_disks(built: BuiltTemplate) -> None:
    """Refuse to boot ``built`` unless its disk stands alone or is a layer naming exactly
    its (installed, unchanged) base, and so on down the chain."""
    label = f"template {built.template.name} {built.template.version}"
    if built.base_problem is not None:
        raise TemplateNotBuilt(built.base_problem)
    disk_format = str(built.manifest.get("disk_format", "qcow2"))
    if not built.bases:
        if built.base_ref is not None:
            raise TemplateNotBuilt(f"{label}: its base chain was not resolved")
        check_disk(built.disk, disk_format, what=label)
        return
    check_disk(built.disk, disk_format, what=label, backing=backing_name(built.bases[0]))
    check_template_disks(built.bases[0])


def disk_chain(built: BuiltTemplate) -> tuple[str, ...]:
    """The disks under a layer's disk, nearest first (empty for a disk that stands alone)."""
    return tuple(str(base.disk) for base in built.bases)


def check_incoming_disk(disk: Path, manifest: dict[str, Any],
                        repository: TemplateRepository, *, what: str) -> None:
    """Check the disk of a template arriving from outside (an archive, a remote) before it
    is installed: self-contained, or a layer over a base installed here with exactly the
    files its manifest records."""
    from vboxlab.templates.versions import TemplateRequest

    disk_format = str(manifest.get("disk_format", "qcow2"))
    record = manifest.get("base")
    definition = manifest.get("definition") or {}
    layered = (definition.get("build") or {}).get("recipe") == "layer"
    if record is None:
        if layered:
            raise UntrustedImage(f"{what}: manifest.json: its definition is a layer but the "
                                 "manifest names no base; refusing it")
        check_disk(disk, disk_format, what=what)
        return
    if not layered:
        raise UntrustedImage(f"{what}: manifest.json names a base but its definition is not a "
                             "layer; refusing it")
    name, version, files = (record.get("name"), record.get("version"), record.get("files")) \
        if isinstance(record, dict) else (None, None, None)
    if not is_valid_name(name) or not isinstance(version, str) or \
            not _VERSION.fullmatch(version) or not isinstance(files, dict):
        raise UntrustedImage(f"{what}: manifest.json: base {record!r} is not a base record "
                             "(name, version, files)")
    if not TemplateRequest.parse(str(definition.get("base"))).matches(version) or \
            TemplateRequest.parse(str(definition.get("base"))).name != name:
        raise UntrustedImage(f"{what}: manifest.json: base {name} {version} does not satisfy "
                             f"its definition's base {definition.get('base')!r}")
    base = next((b for b in repository.installed(name) if b.template.version == version), None)
    if base is None:
        raise UntrustedImage(f"{what} is a layer over {name} {version}, which is not installed "
                             f"here: import or pull {name}@{version} first, or export the "
                             "layer again with --with-base")
    if base.manifest.get("files") != files:
        raise UntrustedImage(f"{what} is a layer over {name} {version}, but the {name} "
                             f"{version} installed here has other contents; the layer would "
                             "read a different disk under it. Remove this machine's "
                             f"{name}@{version} (and what is layered on it) or rebuild the layer")
    if base.base_problem is not None:
        raise UntrustedImage(f"{what}: its base: {base.base_problem}")
    check_disk(disk, disk_format, what=what, backing=backing_name(base))
