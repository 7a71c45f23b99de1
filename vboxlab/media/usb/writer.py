"""Writing an image to a disk: checked, fast on sparse images, verified past the page cache.

The device is checked (safety.py), its identity (serial or backing file, and
size) read again right before it is opened, and it is opened exclusively (the
kernel refuses if something mounted it meanwhile). Runs of zeros in the image,
holes or not, are not written but zeroed with BLKZEROOUT (loop devices and SSDs
do that without moving data; elsewhere the kernel writes the zeros itself), so
the result is always byte-identical to the image. ``fsync`` ends the write; the
verification then reads the device with O_DIRECT (not the page cache) and
compares SHA-256 sums. Any error on the way raises UsbWriteError: never a
reported success for a stick that is not right.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vboxlab.media.tree import MediaError
from vboxlab.media.usb.devices import BlockDevice, DeviceSource, device_source
from vboxlab.media.usb.safety import Overrides, check

BLOCK = 4 << 20
ZERO_GRAIN = 1 << 20  # zero runs shorter than this are written like data
SECTOR = 512
BLKZEROOUT = 0x127F  # _IO(0x12, 127)
#: (bytes done, bytes in all) while writing, then again while verifying
Progress = Callable[[int, int], None]


class UsbWriteError(MediaError):
    """The write or its verification failed; the device holds an incomplete image."""


@dataclass(frozen=True)
class WriteResult:
    """What a write did."""

    image: Path
    device: Path
    size: int
    data_bytes: int  # written as data
    zero_bytes: int  # zeroed without writing
    write_seconds: float
    verify_seconds: float
    sha256: str


def write_image(image: Path, device: Path, *, overrides: Overrides | None = None,
                expect: tuple[str, int] | None = None, verify: bool = True,
                progress: Progress | None = None,
                source: DeviceSource | None = None) -> WriteResult:
    """Write ``image`` to the whole disk ``device``; see the module text for the guarantees.

    ``expect`` is the identity (``BlockDevice.identity``) the caller showed the
    user; if the device at that path is no longer it, nothing is written.
    """
    image = Path(image)
    if not image.is_file():
        raise MediaError(f"{image}: no such image file")
    source = source or device_source()
    target = source.device(Path(device))
    if expect is not None and target.identity != expect:
        raise UsbWriteError(f"{device} is not the device that was chosen (expected {expect}, "
                            f"found {target.identity}); nothing was written")
    overrides = overrides or Overrides()
    check(image, target, overrides)
    size = image.stat().st_size
    again = source.device(Path(device))  # right before opening: still the same disk?
    if again.identity != target.identity:
        raise UsbWriteError(f"{device} changed while it was being checked (was "
                            f"{target.identity}, now {again.identity}); nothing was written")
    flags = os.O_WRONLY | os.O_CLOEXEC | (0 if overrides.allow_mounted else os.O_EXCL)
    try:
        fd = os.open(target.path, flags)
    except OSError as exc:
        hint = " (it is mounted or in use)" if exc.errno == errno.EBUSY else ""
        raise UsbWriteError(f"cannot open {target.path} for writing{hint}: {exc}") from None
    started = time.perf_counter()
    data = zeros = 0
    try:
        rdev = os.fstat(fd).st_rdev
        if (os.major(rdev), os.minor(rdev)) != target.numbers[0]:
            raise UsbWriteError(f"{target.path} changed identity when opened; nothing written")
        data, zeros = _copy(image, fd, size, target, progress)
        os.fsync(fd)
    except UsbWriteError:
        raise
    except OSError as exc:
        raise UsbWriteError(
            f"writing {image} to {target.describe()} failed after {data + zeros} of {size} "
            f"bytes: {exc}. The device holds an incomplete image: do not boot from it") from None
    finally:
        os.close(fd)
    write_seconds = time.perf_counter() - started
    started = time.perf_counter()
    digest = _sha256_file(image)
    if verify:
        on_device = _sha256_device(target, size, progress)
        if on_device != digest:
            raise UsbWriteError(f"verification failed: {target.path} reads back with SHA-256 "
                                f"{on_device}, the image has {digest}; the stick is faulty or "
                                "was changed while writing")
    return WriteResult(image, target.path, size, data, zeros, write_seconds,
                       time.perf_counter() - started, digest)


def _extents(fd: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, length, is_data) runs of the image; holes come from SEEK_DATA/SEEK_HOLE."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                yield offset, size - offset, False
                return
            yield offset, size - offset, True  # no SEEK_DATA here: treat all as data
            return
        if start > offset:
            yield offset, start - offset, False
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end - start, True
        offset = end


def _copy(image: Path, out: int, size: int, target: BlockDevice,
          progress: Progress | None) -> tuple[int, int]:
    zero_block = bytes(ZERO_GRAIN)
    data = zeros = 0
    pending_zero: list[int] = []  # [start, length] of the zero run not yet zeroed

    def flush_zero() -> None:
        nonlocal zeros
        if pending_zero:
            _zero(out, pending_zero[0], pending_zero[1])
            zeros += pending_zero[1]
            pending_zero.clear()

    def zero_run(start: int, length: int) -> None:
        if pending_zero and pending_zero[0] + pending_zero[1] == start:
            pending_zero[1] += length
        else:
            flush_zero()
            pending_zero[:] = [start, length]

    with image.open("rb", buffering=0) as src:
        for start, length, is_data in _extents(src.fileno(), size):
            if not is_data:
                zero_run(start, length)
                continue
            position = start
            while position < start + length:
                chunk = os.pread(src.fileno(), min(BLOCK, start + length - position), position)
                if not chunk:
                    raise UsbWriteError(f"{image} ended early at byte {position}")
                view = memoryview(chunk)
                for offset in range(0, len(chunk), ZERO_GRAIN):  # zero runs, 1 MiB grain
                    piece = view[offset:offset + ZERO_GRAIN]
                    if piece == zero_block[:len(piece)] and len(piece) % SECTOR == 0:
                        zero_run(position + offset, len(piece))
                    else:
                        flush_zero()
                        _pwrite_all(out, piece, position + offset)
                        data += len(piece)
                position += len(chunk)
                if progress is not None:
                    progress(position, size)
        flush_zero()
    if progress is not None:
        progress(size, size)
    return data, zeros


def _pwrite_all(fd: int, chunk: bytes | memoryview, offset: int) -> None:
    view = memoryview(chunk)
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(errno.EIO, "short write")
        view = view[written:]
        offset += written


def _zero(fd: int, start: int, length: int) -> None:
    """Make ``length`` bytes at ``start`` zero without sending them, if the device can."""
    aligned = length - length % SECTOR
    try:
        if start % SECTOR == 0 and aligned:
            fcntl.ioctl(fd, BLKZEROOUT, struct.pack("QQ", start, aligned))
            start, length = start + aligned, length - aligned
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL):
            raise
    while length > 0:  # not aligned, or the ioctl is not supported: write the zeros
        piece = min(length, BLOCK)
        _pwrite_all(fd, bytes(piece), start)
        start += piece
        length -= piece


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as src:
        while chunk := src.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_device(target: BlockDevice, size: int, progress: Progress | None) -> str:
    """SHA-256 of the device's first ``size`` bytes, read with O_DIRECT (not the page cache)."""
    digest = hashlib.sha256()
    buffer = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    try:
        fd = os.open(target.path, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as exc:
        raise UsbWriteError(f"cannot read {target.path} back to verify it: {exc}") from None
    try:
        done = 0
        while done < size:
            got = os.preadv(fd, [buffer], done)
            if got <= 0:
                raise UsbWriteError(f"{target.path} ended at byte {done} while verifying; "
                                    f"the image has {size}")
            take = min(got, size - done)
            digest.update(memoryview(buffer)[:take])
            done += take
            if progress is not None:
                progress(done, size)
    except OSError as exc:
        raise UsbWriteError(f"reading {target.path} back failed at byte {done}: {exc}") from None
    finally:
        os.close(fd)
        buffer.close()
    return digest.hexdigest()
