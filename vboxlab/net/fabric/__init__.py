"""The userspace fabric: a C data path between lab NICs, controlled from Python."""

from vboxlab.net.fabric.control import CaptureRing, Fabric, FabricError, build_binary

__all__ = ["CaptureRing", "Fabric", "FabricError", "build_binary"]
