"""Bootloader files from Debian packages: ISOLINUX for BIOS, a GRUB EFI image for UEFI.

Every file is looked up where its Debian package installs it; a missing one
raises an error that names the package to install.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vboxlab.errors import HostError
from vboxlab.hosttools import run
from vboxlab.media.tree import MediaError

SYSLINUX_BIOS = Path("/usr/lib/syslinux/modules/bios")
#: file -> (where Debian puts it, package)
BIOS_FILES = {
    "isolinux.bin": (Path("/usr/lib/ISOLINUX/isolinux.bin"), "isolinux"),
    "ldlinux.c32": (SYSLINUX_BIOS / "ldlinux.c32", "syslinux-common"),
    "menu.c32": (SYSLINUX_BIOS / "menu.c32", "syslinux-common"),
    "libutil.c32": (SYSLINUX_BIOS / "libutil.c32", "syslinux-common"),
    "libcom32.c32": (SYSLINUX_BIOS / "libcom32.c32", "syslinux-common"),
}
GRUB_EFI_MODULES = Path("/usr/lib/grub/x86_64-efi")
#: modules the EFI image carries: enough to find the medium, show a menu and boot Linux
GRUB_MODULES = ("iso9660 part_msdos part_gpt fat normal linux search search_fs_file "
                "configfile echo test all_video efi_gop efi_uga gfxterm terminal")
OVMF_PATHS = (Path("/usr/share/ovmf/OVMF.fd"), Path("/usr/share/OVMF/OVMF_CODE.fd"))


def bios_file(name: str) -> Path:
    """Path of one ISOLINUX file; MediaError naming the Debian package if it is missing."""
    path, package = BIOS_FILES[name]
    if not path.is_file():
        raise MediaError(f"{path} is missing: BIOS boot needs it. Install it with: "
                         f"apt-get install {package}")
    return path


def ovmf_firmware() -> Path:
    """The OVMF UEFI firmware for QEMU; HostError naming the package if it is missing."""
    for path in OVMF_PATHS:
        if path.is_file():
            return path
    raise HostError("no OVMF firmware found (UEFI boot under QEMU needs it); install it with: "
                    "apt-get install ovmf")


@dataclass(frozen=True)
class EfiImage:
    """A FAT image holding EFI/BOOT/BOOTX64.EFI (GRUB with the menu built in)."""

    path: Path
    size: int


def build_efi_image(grub_cfg: str, workdir: Path) -> EfiImage:
    """GRUB as a standalone EFI program (its grub.cfg inside) in a FAT image for El Torito."""
    if not (GRUB_EFI_MODULES / "linux.mod").is_file():
        raise MediaError(f"{GRUB_EFI_MODULES} has no GRUB EFI modules: UEFI boot needs them. "
                         "Install them with: apt-get install grub-efi-amd64-bin")
    tools = {"grub-mkstandalone": "grub-common", "mkfs.fat": "dosfstools",
             "mmd": "mtools", "mcopy": "mtools"}
    for tool, package in tools.items():
        if shutil.which(tool) is None:
            raise MediaError(f"{tool} is missing: building the UEFI boot image needs it. "
                             f"Install it with: apt-get install {package}")
    with tempfile.TemporaryDirectory(dir=workdir) as scratch:
        cfg = Path(scratch) / "grub.cfg"
        cfg.write_text(grub_cfg)
        program = Path(scratch) / "BOOTX64.EFI"
        run(["grub-mkstandalone", "-O", "x86_64-efi", "--locales=", "--fonts=", "--themes=",
             f"--install-modules={GRUB_MODULES}", f"--modules={GRUB_MODULES}",
             "-o", str(program), f"boot/grub/grub.cfg={cfg}"],
            what="building the GRUB EFI program", error=MediaError)
        # FAT12/16 with room for the program and its directories
        kib = max(1440, (program.stat().st_size // 1024) * 11 // 10 + 256)
        image = workdir / "efiboot.img"
        image.unlink(missing_ok=True)
        run(["mkfs.fat", "-C", "-n", "EFIBOOT", str(image), str(kib)],
            what="making the EFI FAT image", error=MediaError)
        run(["mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT"],
            what="making EFI/BOOT in the FAT image", error=MediaError)
        run(["mcopy", "-i", str(image), str(program), "::/EFI/BOOT/BOOTX64.EFI"],
            what="copying GRUB into the FAT image", error=MediaError)
    return EfiImage(image, image.stat().st_size)
