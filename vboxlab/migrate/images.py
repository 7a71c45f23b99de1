"""Disk images in other hypervisors' formats: recognised, checked, converted by qemu-img.

An image from elsewhere is untrusted: a VMDK descriptor can name any host file
as an extent, a VHDX or qcow2 a parent, and qemu-img guesses formats when not
told (a raw image whose first bytes look like qcow2 would be read as one). So
the format is taken from the file's own magic bytes, refused if it is none we
know (raw only when the user says so), and ``qemu-img info`` must then agree
and show that the image stands alone before any conversion runs; conversions
always name the input format (``-f``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vboxlab.errors import ConfigError, UntrustedImage
from vboxlab.hosttools import require
from vboxlab.templates.trust import header_problems, qemu_img_info

#: what ``vboxlab export`` writes and ``templates import-image`` reads (ova: an archive)
DISK_FORMATS = ("qcow2", "vmdk", "vdi", "vhdx", "raw")
#: qemu-img options of each output format, as other hypervisors read it best
OUTPUT_OPTIONS: dict[str, list[str]] = {
    "qcow2": ["-O", "qcow2"],
    "vmdk": ["-O", "vmdk", "-o", "subformat=monolithicSparse"],
    "vdi": ["-O", "vdi"],
    "vhdx": ["-O", "vhdx"],
    "stream-vmdk": ["-O", "vmdk", "-o", "subformat=streamOptimized"],
}
_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")
Progress = Callable[[float], None]


def detect_format(path: Path) -> str | None:
    """The format ``path``'s first bytes announce (ova: a tar archive), or None."""
    with path.open("rb") as handle:
        head = handle.read(1024)
    if head[:4] == b"QFI\xfb":
        return "qcow2"
    if head[:4] == b"KDMV":
        return "vmdk"
    if head[:21] == b"# Disk DescriptorFile":
        return "vmdk-descriptor"
    if head[:8] == b"vhdxfile":
        return "vhdx"
    if len(head) >= 0x44 and head[0x40:0x44] == b"\x7f\x10\xda\xbe":
        return "vdi"
    if len(head) >= 263 and head[257:262] == b"ustar":
        return "ova"
    return None


def check_image(path: Path, fmt: str, *, what: str) -> dict[str, Any]:
    """Refuse ``path`` unless it is a self-contained ``fmt`` image; returns qemu-img's info."""
    if fmt == "vmdk-descriptor":
        raise UntrustedImage(f"{what}: {path.name} is a VMDK descriptor that keeps its data in "
                             "other files; give a single-file VMDK (monolithicSparse or "
                             "streamOptimized, as OVAs hold) instead")
    if fmt not in DISK_FORMATS:
        raise UntrustedImage(f"{what}: format {fmt!r} is not one of {', '.join(DISK_FORMATS)}")
    if fmt == "qcow2":
        _, problems = header_problems(path)
        if problems:
            raise UntrustedImage(f"{what}: {path.name} {'; '.join(problems)}; refusing it")
    info = qemu_img_info(path, what, fmt)
    problems = []
    if info.get("format") != fmt:
        problems.append(f"qemu-img reads it as {info.get('format')!r}, not {fmt}")
    for key in ("backing-filename", "full-backing-filename"):
        if info.get(key):
            problems.append(f"names a parent image {info[key]!r}")
    specific = info.get("format-specific", {}).get("data", {})
    if specific.get("data-file"):
        problems.append(f"names an external data file {specific['data-file']!r}")
    for extent in specific.get("extents", []):
        if Path(str(extent.get("filename", ""))).resolve() != path.resolve():
            problems.append(f"keeps data in another file {extent.get('filename')!r}")
    if problems:
        raise UntrustedImage(f"{what}: {path.name} {'; '.join(problems)}; an imported image "
                             "must stand alone. Refusing it")
    return info


def convert(source: Path, source_format: str, target: Path, output: str, *,
            snapshot: str | None = None, force_share: bool = False,
            progress: Progress | None = None) -> None:
    """``qemu-img convert`` ``source`` into ``target`` (``output``: a key of OUTPUT_OPTIONS),
    optionally as it was at internal snapshot ``snapshot``; reports percent done."""
    if output not in OUTPUT_OPTIONS:
        raise ConfigError(f"output format {output!r} is not one of "
                          f"{', '.join(OUTPUT_OPTIONS)}")
    argv = [require("qemu-img", "to convert disk images"), "convert", "-p", "-f",
            source_format, *OUTPUT_OPTIONS[output]]
    if force_share:
        argv.append("-U")
    if snapshot is not None:
        argv += ["-l", f"snapshot.name={snapshot}"]
    argv += [str(source), str(target)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          bufsize=0) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        buffer = b""
        while chunk := proc.stdout.read(4096):
            buffer = (buffer + chunk)[-256:]
            found = _PROGRESS_RE.findall(buffer)
            if found and progress is not None:
                progress(float(found[-1]))
            buffer = buffer[buffer.rfind(b"\r") + 1:]
        errors = proc.stderr.read().decode(errors="replace").strip()
        status = proc.wait()
    if status != 0:
        target.unlink(missing_ok=True)
        raise ConfigError(f"converting {source.name} to {output} failed: {errors[-1500:]}")
