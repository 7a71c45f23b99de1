"""The checks that stand between an image and a disk.

Refused always: the disk holding / or active swap, the disk the image itself is
on, a disk smaller than the image, a disk other devices are built on (LVM, RAID,
dm-crypt). Refused unless overridden: a disk that is not removable
(``allow_fixed``; loop devices in tests need it) and a disk with a mounted
filesystem (``allow_mounted``; vboxlab never unmounts anything itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vboxlab.media.tree import MediaError
from vboxlab.media.usb.devices import BlockDevice, holds_file


class UnsafeTarget(MediaError):
    """Writing to this device was refused."""


@dataclass(frozen=True)
class Overrides:
    """What the caller explicitly accepts."""

    allow_fixed: bool = False
    allow_mounted: bool = False


def refusals(image: Path, device: BlockDevice, overrides: Overrides) -> list[str]:
    """Every reason not to write ``image`` to ``device`` (empty: go ahead)."""
    reasons = []
    if "/" in device.mountpoints:
        reasons.append("it holds the root filesystem /")
    if device.swap:
        reasons.append("it holds active swap")
    if holds_file(device, image):
        reasons.append(f"the image {image} is stored on it")
    if device.holders:
        reasons.append(f"other devices are built on it ({', '.join(device.holders)}: LVM, "
                       "RAID or encryption)")
    size = Path(image).stat().st_size
    if device.size < size:
        reasons.append(f"it is smaller ({device.size} bytes) than the image ({size} bytes)")
    if device.size == 0:
        reasons.append("it has no medium (size 0)")
    if not device.removable and not overrides.allow_fixed:
        reasons.append(f"it is not a removable disk (transport {device.transport}); pass "
                       "allow_fixed / --allow-fixed-disk if you really mean it")
    mounted = [m for m in device.mountpoints if m != "/"]
    if mounted and not overrides.allow_mounted:
        reasons.append(f"it has mounted filesystems ({', '.join(mounted)}); unmount them, or "
                       "pass allow_mounted / --allow-mounted")
    return reasons


def check(image: Path, device: BlockDevice, overrides: Overrides) -> None:
    """Raise UnsafeTarget listing every reason, if there is one."""
    reasons = refusals(image, device, overrides)
    if reasons:
        raise UnsafeTarget(f"refusing to write {image} to {device.describe()}: "
                           + "; ".join(reasons))
