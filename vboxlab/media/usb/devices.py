"""Block devices a USB image can go to, and what is on them.

``device_source()`` returns the platform's implementation of :class:`DeviceSource`;
Linux reads sysfs and /proc. Other platforms get a clear not-supported error
until someone implements the protocol for them.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vboxlab.media.tree import MediaError

SYS_BLOCK = Path("/sys/block")


class UnsupportedPlatform(MediaError):
    """Device detection is not implemented for this operating system."""


@dataclass(frozen=True)
class BlockDevice:
    """A whole disk and what the system uses it for."""

    name: str  # sdb, loop3, nvme0n1
    path: Path  # /dev/sdb
    size: int  # bytes
    removable: bool
    transport: str  # usb, sata, nvme, virtio, loop, mmc, unknown
    model: str
    serial: str
    partitions: tuple[str, ...]
    mountpoints: tuple[str, ...]  # of the disk and its partitions
    swap: bool  # the disk or a partition is active swap
    holders: tuple[str, ...]  # device-mapper/md devices built on it
    backing_file: str = ""  # loop devices: the file behind them
    numbers: tuple[tuple[int, int], ...] = ()  # (major, minor) of the disk and its partitions

    @property
    def identity(self) -> tuple[str, int]:
        """What must not change between choosing the device and writing it."""
        return (self.serial or self.backing_file or self.name, self.size)

    def describe(self) -> str:
        size = f"{self.size / 1e9:.1f} GB" if self.size >= 1e9 else f"{self.size / 1e6:.0f} MB"
        who = " ".join(p for p in (self.model, self.serial and f"serial {self.serial}",
                                   self.backing_file and f"file {self.backing_file}") if p)
        return f"{self.path} ({size}, {self.transport}, {who or 'no model'})"


class DeviceSource(Protocol):
    """Lists whole disks; one implementation per platform."""

    def devices(self) -> list[BlockDevice]: ...

    def device(self, path: Path) -> BlockDevice: ...


def device_source() -> DeviceSource:
    """The implementation for this platform."""
    if sys.platform.startswith("linux"):
        return LinuxDevices()
    raise UnsupportedPlatform(f"USB device detection is implemented for Linux (sysfs) only; on "
                              f"{sys.platform} it is not supported yet")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _numbers(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(":")
    return int(major), int(minor)


class LinuxDevices:
    """Disks from /sys/block, mounts from /proc/self/mountinfo, swap from /proc/swaps."""

    def devices(self) -> list[BlockDevice]:
        return [self._read(entry.name) for entry in sorted(SYS_BLOCK.iterdir())
                if not entry.name.startswith(("ram", "zram", "dm-", "md", "sr"))
                and (_read(entry / "size") not in ("", "0"))]

    def device(self, path: Path) -> BlockDevice:
        path = Path(path)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise MediaError(f"{path}: no such device; `vboxlab usb list` shows the disks "
                             "this machine has") from None
        if not stat.S_ISBLK(info.st_mode):
            raise MediaError(f"{path} is not a block device; give a whole disk such as /dev/sdb")
        wanted = (os.major(info.st_rdev), os.minor(info.st_rdev))
        for entry in SYS_BLOCK.iterdir():
            if _read(entry / "dev") and _numbers(_read(entry / "dev")) == wanted:
                return self._read(entry.name)
        raise MediaError(f"{path} is a partition, not a whole disk; write images to the disk "
                         "itself (for example /dev/sdb, not /dev/sdb1)")

    def _read(self, name: str) -> BlockDevice:
        base = SYS_BLOCK / name
        partitions = tuple(sorted(p.name for p in base.iterdir()
                                  if p.name.startswith(name) and (p / "partition").exists()))
        numbers = [_numbers(_read(base / "dev"))]
        numbers += [_numbers(_read(base / p / "dev")) for p in partitions]
        mounts = _mounts_of(set(numbers))
        real = str(base.resolve())
        transport = ("usb" if "/usb" in real else "nvme" if "/nvme" in real else
                     "loop" if name.startswith("loop") else "virtio" if "/virtio" in real else
                     "mmc" if "/mmc" in real else "sata" if "/ata" in real else "unknown")
        holders = tuple(sorted(h.name for h in (base / "holders").iterdir())) \
            if (base / "holders").is_dir() else ()
        return BlockDevice(
            name=name, path=Path("/dev") / name, size=int(_read(base / "size") or 0) * 512,
            removable=_read(base / "removable") == "1", transport=transport,
            model=_read(base / "device" / "model"), serial=_serial(base),
            partitions=partitions, mountpoints=mounts, swap=_swapping(set(numbers)),
            holders=holders, backing_file=_read(base / "loop" / "backing_file"),
            numbers=tuple(numbers))


def _serial(base: Path) -> str:
    """The disk's serial: its own attribute, or the USB device's up the sysfs tree."""
    own = _read(base / "device" / "serial") or _read(base / "device" / "wwid")
    if own:
        return own
    node = (base / "device").resolve() if (base / "device").exists() else None
    while node is not None and node != node.parent:
        if (node / "serial").is_file() and (node / "idVendor").is_file():
            return _read(node / "serial")
        node = node.parent
    return ""


def _mounts_of(numbers: set[tuple[int, int]]) -> tuple[str, ...]:
    found = []
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if len(fields) > 4 and ":" in fields[2] and _numbers(fields[2]) in numbers:
            found.append(fields[4].replace("\\040", " "))
    return tuple(found)


def _swapping(numbers: set[tuple[int, int]]) -> bool:
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        source = line.split()[0]
        try:
            rdev = Path(source).stat().st_rdev
        except OSError:
            continue
        if (os.major(rdev), os.minor(rdev)) in numbers:
            return True
    return False


def holds_file(device: BlockDevice, path: Path) -> bool:
    """True if ``path`` lives on ``device`` (or a partition of it)."""
    dev = Path(path).stat().st_dev
    return (os.major(dev), os.minor(dev)) in device.numbers
