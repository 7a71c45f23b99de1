"""USB sticks: finding them, refusing the wrong one, writing and verifying images."""

from vboxlab.media.usb.devices import BlockDevice, DeviceSource, UnsupportedPlatform, device_source
from vboxlab.media.usb.safety import Overrides, UnsafeTarget
from vboxlab.media.usb.writer import UsbWriteError, WriteResult, write_image

__all__ = ["BlockDevice", "DeviceSource", "Overrides", "UnsafeTarget", "UnsupportedPlatform",
           "UsbWriteError", "WriteResult", "device_source", "write_image"]
