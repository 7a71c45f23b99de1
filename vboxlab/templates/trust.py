"""What a template image must be before QEMU or the repository trusts it.

A qcow2 image names other files in its header: a backing file (its reads fall
through to it) and an external data file (its data lives there). An archive
whose ``disk.qcow2`` names ``/etc/shadow`` or ``/dev/vda`` would map that host
file into the guest. So every template disk is checked on import and on every
boot: its header is read here, without opening anything it names, and refused
if it names any file; then ``qemu-img info --output=json`` (which opens nothing
else once that holds) must agree on the format and see no backing or data file.

Manifests are checked too: the embedded definition must have the manifest's
name and version, and the kernel, initrd and disk must be among its files.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vboxlab.errors import UntrustedImage
from vboxlab.hosttools import require, run

QCOW2_MAGIC = b"QFI\xfb"
#: the files every built template has, beside its manifest
REQUIRED_FILES = ("vmlinuz", "initrd.cpio", "disk.qcow2")
DISK_FORMATS = ("qcow2",)
_EXTERNAL_DATA_FILE_BIT = 1 << 2
_EXT_DATA_FILE_NAME = 0x44415441
_EXT_BACKING_FORMAT = 0xE2792ACA


def header_problems(path: Path, backing: str | None = None) -> tuple[str | None, list[str]]:
    """(format seen by magic, problems) from the first 64 KiB of the image; ``backing``:
    the one backing file name (a layer's base, in qcow2 format) the header must give."""
    with path.open("rb") as handle:
        head = handle.read(65536)
    if head[:4] != QCOW2_MAGIC:
        return None, []
    if len(head) < 72:
        return "qcow2", [f"is cut short ({len(head)} bytes, less than a qcow2 header)"]
    problems = []
    version, backing_offset, backing_size = struct.unpack(">IQI", head[4:20])
    named = None
    if backing_offset or backing_size:
        named = head[backing_offset:backing_offset + min(backing_size, 1023)].decode(
            errors="replace")
        if named != backing:
            problems.append(f"names a backing file {named!r}" + (
                f" where its base is {backing!r}" if backing else ""))
    elif backing is not None:
        problems.append(f"names no backing file where its base is {backing!r}")
    if version >= 3 and len(head) >= 104:
        incompatible = struct.unpack(">Q", head[72:80])[0]
        header_length = struct.unpack(">I", head[100:104])[0]
        if incompatible & _EXTERNAL_DATA_FILE_BIT:
            problems.append("keeps its data in an external data file")
        offset = header_length
    else:
        offset = 72
    while offset + 8 <= len(head):
        kind, length = struct.unpack(">II", head[offset:offset + 8])
        if kind == 0:
            break
        data = head[offset + 8:offset + 8 + length]
        if kind == _EXT_DATA_FILE_NAME:
            problems.append(f"names an external data file {data.decode(errors='replace')!r}")
        elif kind == _EXT_BACKING_FORMAT and not backing_offset:
            problems.append("carries a backing format without a backing file")
        elif kind == _EXT_BACKING_FORMAT and data.rstrip(b"\0") != b"qcow2":
            problems.append(f"gives its backing file format "
                            f"{data.decode(errors='replace')!r}, not qcow2")
        offset += 8 + ((length + 7) & ~7)
    return "qcow2", problems


def check_disk(path: Path, expected_format: str = "qcow2", *, what: str = "",
               backing: str | None = None) -> None:
    """Refuse ``path`` unless it is a self-contained image of ``expected_format``, or (a
    layer) a qcow2 image whose only outside reference is ``backing``, its base's disk."""
    label = what or str(path)
    if expected_format not in DISK_FORMATS:
        raise UntrustedImage(f"{label}: disk format {expected_format!r} is not accepted; "
                             f"template disks are {', '.join(DISK_FORMATS)}")
    if backing is not None and expected_format != "qcow2":
        raise UntrustedImage(f"{label}: a layer's disk is qcow2, not {expected_format!r}")
    try:
        seen, problems = header_problems(path, backing)
    except OSError as exc:
        raise UntrustedImage(f"{label}: cannot read {path}: {exc}") from None
    if seen != expected_format:
        raise UntrustedImage(f"{label}: {path.name} is not a {expected_format} image (its "
                             "first bytes say otherwise); the template is damaged or was "
                             "tampered with: rebuild or re-import it")
    if problems:
        raise UntrustedImage(f"{label}: {path.name} {'; '.join(problems)}; template disks must "
                             "stand alone or (layers) name only their base's disk (any other "
                             "backing or data file would map a host file into the guest). "
                             "Refusing it: rebuild the template, or import an archive from a "
                             "source you trust")
    info = qemu_img_info(path, label, expected_format)
    problems = []
    if info.get("format") != expected_format:
        problems.append(f"qemu-img reads it as {info.get('format')!r}")
    if info.get("backing-filename") != backing:
        problems.append(f"names a backing file {info.get('backing-filename')!r}")
    if backing is not None and info.get("backing-filename-format") not in (None, "qcow2"):
        problems.append(f"names a backing format {info.get('backing-filename-format')!r}")
    elif backing is None:
        for key in ("full-backing-filename", "backing-filename-format"):
            if info.get(key):
                problems.append(f"names a backing file {info[key]!r}")
    data = info.get("format-specific", {}).get("data", {})
    if data.get("data-file"):
        problems.append(f"names an external data file {data['data-file']!r}")
    if data.get("corrupt"):
        problems.append("is marked corrupt")
    if problems:
        raise UntrustedImage(f"{label}: {path.name} {'; '.join(problems)}; refusing it")


def qemu_img_info(path: Path, label: str, fmt: str | None = None) -> dict[str, Any]:
    """``qemu-img info`` of ``path`` as JSON (read as ``fmt`` when given: no guessing)."""
    qemu_img = require("qemu-img", "to check template images")
    given = ["-f", fmt] if fmt else []
    out = run([qemu_img, "info", "-U", *given, "--output=json", str(path)], timeout=30,
              what=f"{label}: reading the header of {path.name}", error=UntrustedImage)
    try:
        info: dict[str, Any] = json.loads(out)
    except json.JSONDecodeError as exc:
        raise UntrustedImage(f"{label}: qemu-img info printed no JSON: {exc}") from None
    return info


def check_manifest(manifest: dict[str, Any], *, what: str) -> None:
    """Refuse a manifest whose definition, files or disk format do not fit together."""
    from vboxlab.templates.definition import TemplateDefinition

    files = manifest.get("files")
    if not isinstance(files, dict):
        raise UntrustedImage(f"{what}: manifest.json lists no files")
    definition_data = manifest.get("definition")
    firmware = (definition_data.get("boot") or {}).get("firmware", "kernel") \
        if isinstance(definition_data, dict) else "kernel"
    required = REQUIRED_FILES if firmware == "kernel" else ("disk.qcow2",)
    missing = [f for f in required if f not in files]
    if missing:
        raise UntrustedImage(f"{what}: manifest.json does not list {', '.join(missing)}; a "
                             "template is a kernel, an initrd and a disk (or a disk that "
                             "boots itself)")
    disk_format = manifest.get("disk_format", "qcow2")
    if disk_format not in DISK_FORMATS:
        raise UntrustedImage(f"{what}: manifest.json: disk_format {disk_format!r} is not one "
                             f"of {', '.join(DISK_FORMATS)}")
    raw = manifest.get("definition")
    if raw is None:
        raise UntrustedImage(f"{what}: manifest.json carries no definition (built by an old "
                             "vboxlab?); rebuild the template and export it again")
    try:
        definition = TemplateDefinition.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top)"
        raise UntrustedImage(f"{what}: manifest.json: definition field {field}: "
                             f"{err['msg']}") from None
    if (definition.name, definition.version) != (manifest.get("name"), manifest.get("version")):
        raise UntrustedImage(
            f"{what}: manifest.json says {manifest.get('name')} {manifest.get('version')} but "
            f"its definition says {definition.name} {definition.version}; refusing a template "
            "that claims two identities")


def local_origin() -> str:
    """An opaque id of this machine, recorded in manifests as where a template was built."""
    for candidate in (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id")):
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        if text:
            return hashlib.sha256(b"vboxlab-origin:" + text.encode()).hexdigest()[:24]
    return hashlib.sha256(b"vboxlab-origin-host:" + socket.gethostname().encode()).hexdigest()[:24]


def is_foreign(manifest: dict[str, Any]) -> bool:
    """True for a template imported from an archive built on another machine."""
    imported = manifest.get("imported")
    if not isinstance(imported, dict):
        return False
    return bool(imported.get("foreign", True))
