"""Proving media by booting them: build an ISO around a template's kernel, boot it, get a Machine.

The image holds the folder the caller gives plus the template's kernel and the
machine's own initrd (its SSH host key and the lab's key are in it), so the
machine answers SSH like any other. It boots as a CD or a USB stick, with BIOS
or UEFI; for a stick, the image can first be written to a block device with the
USB writer, and QEMU then boots that device.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vboxlab.errors import ConfigError
from vboxlab.media.bootspec import BootSpec
from vboxlab.media.iso import build_iso
from vboxlab.media.usb.safety import Overrides
from vboxlab.media.usb.writer import write_image
from vboxlab.providers.base import BootMedia, Capability, require

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine

#: how a machine boots its media: (kind, firmware)
WAYS = {"bios-cdrom": ("cdrom", "bios"), "bios-usb": ("usb", "bios"),
        "uefi-cdrom": ("cdrom", "uefi"), "uefi-usb": ("usb", "uefi")}
UEFI_MIN_MEMORY = 512  # OVMF and GRUB run out of memory below this


def boot_from_media(lab: Lab, name: str, tree: Path | None = None, *, append: str = "",
                    way: str = "bios-cdrom", device: Path | None = None,
                    overrides: Overrides | None = None, template: str | None = None,
                    memory: int | None = None, label: str = "VBOXLAB",
                    boot: bool = True) -> Machine:
    """Build ``tree`` into a bootable ISO with the template's kernel, boot it, return the Machine.

    ``append`` is added to the template's kernel command line. ``way`` is one
    of ``bios-cdrom``, ``bios-usb``, ``uefi-cdrom``, ``uefi-usb``; with a USB way
    and ``device``, the image is written to that block device first (checked by
    the USB safety rules, relaxed by ``overrides``) and QEMU boots the device.
    """
    if way not in WAYS:
        raise ConfigError(f"boot way {way!r}: use one of {', '.join(WAYS)}")
    kind, firmware = WAYS[way]
    if device is not None and kind != "usb":
        raise ConfigError(f"a device is only written for USB ways, not {way}")
    built = lab.repository.built(template or lab.default_template)
    if firmware == "uefi":
        memory = max(memory or 0, UEFI_MIN_MEMORY)
    image = lab.dir / name / "media.iso"
    machine = lab.vm(name, template=template, memory=memory, boot=False,
                     media=BootMedia(device if device is not None else image, kind, firmware))
    try:
        require(machine.handle, Capability.BOOT_MEDIA, "boot media need a VM provider (qemu)")
        initrd = machine.handle.boot_initrd()
        cmdline = f"{built.template.definition.boot.cmdline} {append}".strip()
        spec = BootSpec.single("boot/vmlinuz", "boot/initrd.img", cmdline)
        build_iso(tree, image, label=label, boot=spec,
                  extra={"boot/vmlinuz": built.kernel, "boot/initrd.img": initrd})
        if device is not None:
            write_image(image, device, overrides=overrides or Overrides())
        if boot:
            lab.boot(machine)  # announced like every machine (pytest_vboxlab_machine_ready)
    except BaseException:
        lab.remove_vm(name)
        raise
    return machine
