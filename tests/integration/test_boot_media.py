"""Boot media proven by booting them: BIOS from CD, BIOS from a USB stick, UEFI from CD."""

import subprocess

import pytest

from vboxlab.errors import ConfigError
from vboxlab.media import MediaError
from vboxlab.pytest.policy import require_tool


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "README.txt").write_text("on the medium\n")
    (root / "docs" / "deep" / "er" / "a-file-with-a-rather-long-name.conf").write_text("x=1\n")
    return root


@pytest.fixture
def loop_device(tmp_path):
    """A 96 MiB loop device standing in for a USB stick (detached afterwards)."""
    require_tool("losetup", "mount")
    backing = tmp_path / "stick.img"
    with backing.open("wb") as out:
        out.truncate(96 << 20)
    path = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True, check=True).stdout.strip()
    try:
        yield path
    finally:
        subprocess.run(["losetup", "-d", path], check=True)


def cmdline(machine):
    return machine.succeed("cat /proc/cmdline").split()


@pytest.mark.root
def test_bios_from_cd(boot_media, tree, lab):
    ready = []  # the machine_ready announcement fires for boot media machines too
    lab.on_machine_ready.append(ready.append)
    try:
        machine = boot_media(tree, append="vboxlab.proof=cd-42 lab.role=server")
    finally:
        lab.on_machine_ready.remove(ready.append)
    assert ready == [machine]
    assert {"vboxlab.proof=cd-42", "lab.role=server", "console=ttyS0"} <= set(cmdline(machine))
    machine.fail("test -d /sys/firmware/efi")  # SeaBIOS, not UEFI


@pytest.mark.root
def test_bios_from_a_usb_stick_written_by_the_writer(boot_media, tree, loop_device):
    machine = boot_media(tree, append="vboxlab.proof=usb-7", way="bios-usb", device=loop_device,
                         allow_fixed=True)
    # the only kernel this VM has is on the stick (no -kernel), loaded by ISOLINUX from it
    assert "vboxlab.proof=usb-7" in cmdline(machine)
    assert "ISOLINUX" in machine.console_log.read_text(errors="replace")
    machine.fail("test -d /sys/firmware/efi")


@pytest.mark.root
def test_uefi_from_cd(boot_media, tree):
    require_tool("grub-mkstandalone", "grub-common")
    machine = boot_media(tree, append="vboxlab.proof=efi-3", way="uefi-cdrom")
    assert "vboxlab.proof=efi-3" in cmdline(machine)
    machine.succeed("test -d /sys/firmware/efi")  # booted through UEFI firmware


def test_boot_media_input_errors(boot_media, tree):
    with pytest.raises(ConfigError, match="boot way 'floppy'"):
        boot_media(tree, way="floppy")
    (tree / "boot").mkdir()
    (tree / "boot" / "vmlinuz").write_text("not a kernel")
    with pytest.raises(MediaError, match="boot/vmlinuz is already in the source tree"):
        boot_media(tree)


@pytest.mark.root
def test_uefi_from_a_usb_stick_too(boot_media, tree, loop_device):
    require_tool("grub-mkstandalone", "grub-common")
    machine = boot_media(tree, append="vboxlab.proof=efi-usb", way="uefi-usb",
                         device=loop_device, allow_fixed=True)
    assert "vboxlab.proof=efi-usb" in cmdline(machine)
    machine.succeed("test -d /sys/firmware/efi")


@pytest.mark.root
@pytest.mark.parametrize("firmware", ["bios", "uefi"])
def test_a_menu_with_a_timeout_boots_its_default_entry(lab, tree, firmware):
    """Two entries, the second the default, a 1 s timeout: ISOLINUX's menu.c32 / GRUB's menu."""
    from vboxlab.media import BootSpec, build_iso
    from vboxlab.providers.base import BootMedia

    if firmware == "uefi":
        require_tool("grub-mkstandalone", "grub-common")
    name = f"menu-{firmware}"
    image = lab.dir / name / "media.iso"
    machine = lab.vm(name, boot=False, memory=512 if firmware == "uefi" else None,
                     media=BootMedia(image, "cdrom", firmware))
    base = lab.repository.built(lab.default_template)
    cmdline_base = base.template.definition.boot.cmdline
    spec = BootSpec.model_validate({
        "default": "second", "timeout": 1,
        "entry": [{"name": "first", "title": "First", "kernel": "boot/vmlinuz",
                   "initrd": "boot/initrd.img", "append": f"{cmdline_base} entry=first"},
                  {"name": "second", "title": "Second", "kernel": "boot/vmlinuz",
                   "initrd": "boot/initrd.img", "append": f"{cmdline_base} entry=second"}]})
    build_iso(tree, image, boot=spec, extra={"boot/vmlinuz": base.kernel,
                                             "boot/initrd.img": machine.handle.initrd})
    try:
        machine.boot()
        assert "entry=second" in machine.succeed("cat /proc/cmdline").split()
    finally:
        lab.remove_vm(name)
