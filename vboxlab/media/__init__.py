"""Boot media: ISO images from folders, cloud-init seeds, USB sticks written safely."""

from vboxlab.media.bootspec import BootEntry, BootSpec
from vboxlab.media.iso import IsoResult, build_iso
from vboxlab.media.tree import MediaError

__all__ = ["BootEntry", "BootSpec", "IsoResult", "MediaError", "build_iso"]
