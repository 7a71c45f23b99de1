"""The template's kernel unpacked once, for QEMU's PVH direct boot (no decompression under TCG).

A bzImage decompresses itself in the guest before its first message; under
TCG that took 3.9 of the 4.4 s between QEMU's start and the kernel's first
line here. Debian's kernels carry a PVH entry point (the Xen ELF note
``PHYS32_ENTRY``), and QEMU boots such an ELF ``vmlinux`` straight into 32-bit
mode. So the payload of the template's bzImage is decompressed once on the
host (xz, gzip, bzip2 or lzma, with a size limit: a template is untrusted
input), checked to be an x86-64 ELF with that note, and cached by the
bzImage's digest. Anything else (no PVH note, another compression) keeps the
bzImage, which always works.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import os
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vboxlab.paths import cache_dir

MAX_BZIMAGE = 64 << 20
MAX_VMLINUX = 512 << 20
XEN_ELFNOTE_PHYS32_ENTRY = 0x12


class NoDirectBoot(Exception):
    """Why a kernel keeps its bzImage boot (said in the lab log)."""


def _payload(image: bytes) -> bytes:
    """The compressed kernel inside a bzImage (boot protocol 2.08+ header fields)."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise NoDirectBoot("not a bzImage (no HdrS header)")
    version = struct.unpack_from("<H", image, 0x206)[0]
    if version < 0x208:
        raise NoDirectBoot(f"boot protocol {version:#x} has no payload fields")
    setup_sects = image[0x1F1] or 4
    start = (setup_sects + 1) * 512
    offset, length = struct.unpack_from("<II", image, 0x248)
    if start + offset + length > len(image):
        raise NoDirectBoot("the payload runs past the end of the image")
    return image[start + offset:start + offset + length]


def _inflate(payload: bytes) -> bytes:
    """The payload decompressed, never past MAX_VMLINUX bytes."""
    decompressor: Any
    if payload.startswith(b"\xfd7zXZ\x00"):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif payload.startswith(b"\x5d\x00\x00"):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    elif payload.startswith(b"\x1f\x8b"):
        decompressor = zlib.decompressobj(wbits=31)
    elif payload.startswith(b"BZh"):
        decompressor = bz2.BZ2Decompressor()
    else:
        raise NoDirectBoot(f"kernel compressed in a way Python cannot read "
                           f"(starts {payload[:4].hex()})")
    try:  # each of them takes the most to return as its second argument
        out = decompressor.decompress(payload, MAX_VMLINUX + 1)
    except (lzma.LZMAError, zlib.error, OSError, EOFError) as exc:
        raise NoDirectBoot(f"the kernel payload does not decompress: {exc}") from None
    if len(out) > MAX_VMLINUX:
        raise NoDirectBoot(f"the kernel decompresses to over {MAX_VMLINUX >> 20} MiB")
    return bytes(out)


def _check_pvh(path: Path) -> None:
    try:
        with path.open("rb") as handle:
            elf = ELFFile(handle)
            if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
                raise NoDirectBoot("the unpacked kernel is not an x86-64 ELF")
            for segment in elf.iter_segments():
                if segment["p_type"] != "PT_NOTE":
                    continue
                for note in segment.iter_notes():  # type: ignore[attr-defined]
                    if note["n_name"] == "Xen" and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                        return
    except ELFError as exc:
        raise NoDirectBoot(f"the unpacked kernel is not a readable ELF: {exc}") from None
    raise NoDirectBoot("the kernel has no PVH entry point (Xen PHYS32_ENTRY note)")


def direct_kernel(bzimage: Path) -> Path:
    """An ELF vmlinux with a PVH entry for ``bzimage``, unpacked once and cached.

    Raises :class:`NoDirectBoot` saying why when the kernel cannot boot that way
    (also when ``VBOXLAB_DIRECT_KERNEL=0`` asks for the bzImage).
    """
    if os.environ.get("VBOXLAB_DIRECT_KERNEL", "1") == "0":
        raise NoDirectBoot("VBOXLAB_DIRECT_KERNEL=0")
    if bzimage.stat().st_size > MAX_BZIMAGE:
        raise NoDirectBoot(f"{bzimage} is over {MAX_BZIMAGE >> 20} MiB")
    image = bzimage.read_bytes()
    folder = cache_dir() / "kernels" / hashlib.sha256(image).hexdigest()[:32]
    target = folder / "vmlinux"
    refused = folder / "no-direct-boot"
    if target.is_file():
        return target
    if refused.is_file():
        raise NoDirectBoot(refused.read_text())
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = folder / f".vmlinux-{os.getpid()}-{threading.get_ident()}"
    try:
        scratch.write_bytes(_inflate(_payload(image)))
        _check_pvh(scratch)
    except NoDirectBoot as exc:
        scratch.unlink(missing_ok=True)
        refused.write_text(str(exc))
        raise
    scratch.chmod(0o644)
    scratch.replace(target)
    return target
