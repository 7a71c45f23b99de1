"""The userspace fabric: a C data path between lab NICs, controlled from Python."""

from vboxlab.net.fabric.control import Fabric, FabricError, build_binary

__all__ = ["Fabric", "FabricError", "build_binary"]
