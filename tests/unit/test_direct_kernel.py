"""The template kernel unpacked for PVH direct boot: real Debian kernels, and bad input."""

import gzip
import lzma
import struct

import pytest

from vboxlab.providers.direct_kernel import NoDirectBoot, _check_pvh, _inflate, direct_kernel
from vboxlab.templates import TemplateRepository


@pytest.fixture
def tiny_kernel():
    """The built tiny template's bzImage (from the real cache, before a test moves it)."""
    return TemplateRepository().built("tiny").kernel


@pytest.fixture
def cache(tiny_kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("VBOXLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def bzimage(payload, setup_sects=4):
    """A minimal bzImage: the boot header fields vboxlab reads, then the payload."""
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x20F)
    struct.pack_into("<II", image, 0x248, 16, len(payload))
    return bytes(image) + b"\0" * 16 + payload


def test_the_tiny_kernel_unpacks_to_a_pvh_elf_once(cache, tiny_kernel):
    kernel = tiny_kernel
    first = direct_kernel(kernel)
    assert first.read_bytes()[:4] == b"\x7fELF" and first.stat().st_size > kernel.stat().st_size
    assert first.is_relative_to(cache / "kernels")
    mtime = first.stat().st_mtime_ns
    assert direct_kernel(kernel) == first and first.stat().st_mtime_ns == mtime  # cached


def test_what_cannot_boot_directly_says_why_and_is_remembered(cache, tiny_kernel, tmp_path,
                                                              monkeypatch):
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"MZ" + b"\0" * 4096)
    with pytest.raises(NoDirectBoot, match="not a bzImage"):
        direct_kernel(bad)
    with pytest.raises(NoDirectBoot, match="not a bzImage"):  # the refusal is cached
        direct_kernel(bad)
    bad.write_bytes(bzimage(b"\x28\xb5\x2f\xfd" + b"\0" * 64))
    with pytest.raises(NoDirectBoot, match="cannot read"):
        direct_kernel(bad)
    bad.write_bytes(bzimage(gzip.compress(b"\x7fELF" + b"\0" * 100)))
    with pytest.raises(NoDirectBoot, match=r"not a readable ELF|not an x86-64 ELF"):
        direct_kernel(bad)
    monkeypatch.setenv("VBOXLAB_DIRECT_KERNEL", "0")
    with pytest.raises(NoDirectBoot, match="VBOXLAB_DIRECT_KERNEL=0"):
        direct_kernel(tiny_kernel)


def test_a_kernel_that_inflates_without_bound_is_refused(monkeypatch):
    monkeypatch.setattr("vboxlab.providers.direct_kernel.MAX_VMLINUX", 1 << 20)
    bomb = lzma.compress(b"\0" * (8 << 20), format=lzma.FORMAT_XZ)
    with pytest.raises(NoDirectBoot, match="over 1 MiB"):
        _inflate(bomb)
    with pytest.raises(NoDirectBoot, match="does not decompress"):
        _inflate(b"\x1f\x8b" + b"garbage" * 10)


def test_an_elf_without_the_pvh_note_keeps_the_bzimage(tmp_path):
    import shutil
    import sys

    plain = tmp_path / "plain"
    shutil.copyfile(sys.executable, plain)  # an x86-64 ELF, but no Xen note
    with pytest.raises(NoDirectBoot, match="no PVH entry point"):
        _check_pvh(plain)
