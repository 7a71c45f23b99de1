"""A cloud-style image (a disk that boots with its own bootloader and takes its keys from a
NoCloud seed) imported with `templates import-image --firmware` and booted: BIOS and UEFI.

No real cloud image exists offline here, so the test makes one: a hybrid ISO (isolinux for
BIOS, GRUB for UEFI, as `vboxlab iso build` writes them) booting tiny's kernel with an init
that reads the seed's cloud-config the way cloud-init's NoCloud source does (the hostname,
`ssh_authorized_keys`, `ssh_keys.ed25519_*`) before sshd starts. vboxlab's side is what a real
cloud image meets: firmware boot from the disk, a `cidata` volume with standard user-data,
meta-data and network-config, and SSH with the host key vboxlab put in the seed pinned.
"""

import io
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from vboxlab.lab import Lab
from vboxlab.media.bootspec import BootSpec
from vboxlab.media.iso import build_iso
from vboxlab.migrate.importer import BootFiles, import_image
from vboxlab.paths import cache_dir
from vboxlab.templates import TemplateRepository
from vboxlab.templates.cpio import CpioWriter

TINY = Path(__file__).parents[2] / "fixtures" / "templates" / "tiny" / "rootfs"
NOCLOUD_INIT = r"""#!/bin/sh
# a minimal NoCloud reader: tiny's set-up, then the seed's keys and name, before sshd starts
sh /etc/init.d/rcS.tiny 2>/dev/null
insmod /lib/modules/cdrom.ko 2>/dev/null
insmod /lib/modules/isofs.ko 2>/dev/null
mkdir -p /run/seed
for dev in /dev/vd?; do
    mount -t iso9660 -o ro "$dev" /run/seed 2>/dev/null || continue
    [ -f /run/seed/user-data ] && break
    umount /run/seed
done
data=/run/seed/user-data
if [ -f "$data" ]; then
    sed -n 's/^hostname: //p' "$data" > /etc/hostname && hostname -F /etc/hostname
    sed -n '/^ssh_authorized_keys:/,/^[^ ]/s/^  - //p' "$data" > /etc/ssh/authorized_keys
    sed -n '/^  ed25519_private: |/,/^  [^ ]/s/^    //p' "$data" \
        > /etc/ssh/ssh_host_ed25519_key
    chmod 600 /etc/ssh/ssh_host_ed25519_key
    sed -n 's/^  ed25519_public: //p' "$data" > /etc/ssh/ssh_host_ed25519_key.pub
    echo "nocloud: seed read" >/dev/console
fi
"""
INITTAB = """::sysinit:/etc/init.d/rcS
::respawn:/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config
::shutdown:/etc/init.d/rcK
"""


def iso9660_modules(tiny) -> dict[str, bytes]:
    """cdrom.ko and isofs.ko of tiny's kernel, from the Debian package its build fetched."""
    version = tiny.manifest["kernel_version"]
    (deb,) = (cache_dir() / "debs").glob(f"linux-image-{version}_*.deb")
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                         check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        return {name: archive.extractfile(f"./lib/modules/{version}/kernel/{path}").read()
                for name, path in (("cdrom.ko", "drivers/cdrom/cdrom.ko"),
                                   ("isofs.ko", "fs/isofs/isofs.ko"))}


@pytest.fixture(scope="module")
def cloud_image(tmp_path_factory):
    """A hybrid ISO that boots itself (BIOS and UEFI) and reads a NoCloud seed."""
    folder = tmp_path_factory.mktemp("cloud")
    tiny = TemplateRepository().built("tiny")
    shim = io.BytesIO()
    cpio = CpioWriter(shim)
    cpio.add_tree_dirs("lib/modules")
    for name, data in iso9660_modules(tiny).items():
        cpio.add_file(f"lib/modules/{name}", data, 0o644)
    cpio.add_file("etc/init.d/rcS.tiny", (TINY / "etc/init.d/rcS").read_bytes(), 0o755)
    cpio.add_file("etc/init.d/rcS", NOCLOUD_INIT.encode(), 0o755)
    cpio.add_file("etc/inittab", INITTAB.encode(), 0o644)
    cpio.close()
    base = tiny.initrd.read_bytes()
    initrd = folder / "initrd.img"
    initrd.write_bytes(base + b"\0" * (-len(base) % 512) + shim.getvalue())
    image = folder / "cloud.img"
    build_iso(None, image, label="CLOUDIMG",
              boot=BootSpec.single("boot/vmlinuz", "boot/initrd.img",
                                   tiny.template.definition.boot.cmdline, uefi=True),
              extra={"boot/vmlinuz": tiny.kernel, "boot/initrd.img": initrd})
    return image


def test_a_cloud_image_boots_its_own_bootloader_and_takes_its_keys_from_the_seed(cloud_image,
                                                                                  tmp_path):
    repository = TemplateRepository(cache=tmp_path / "cache", search=[])
    for firmware in ("bios", "uefi"):
        # GRUB under OVMF runs out of memory loading tiny's kernel and initrd in 256 MiB
        done = import_image(cloud_image, f"cloud-{firmware}", "1.0.0", repository,
                            BootFiles(firmware=firmware), image_format="raw",
                            memory=512 if firmware == "uefi" else None)
        assert sorted(p.name for p in done.folder.iterdir()) == ["disk.qcow2", "manifest.json"]
    built = repository.built("cloud-uefi")
    assert built.firmware == "uefi" and built.template.definition.access.channels == ["ssh"]
    with Lab(base=tmp_path / "labs", repository=repository, accel="tcg") as lab:
        for firmware in ("bios", "uefi"):
            vm = lab.vm(f"vm-{firmware}", template=f"cloud-{firmware}")
            assert vm.succeed("hostname") == f"vm-{firmware}\n"  # from the seed
            assert "nocloud: seed read" in vm.console_tail(200)
            seed = yaml.safe_load(vm.succeed("cat /run/seed/user-data"))  # as cloud-init would
            assert seed["hostname"] == f"vm-{firmware}"
            assert seed["ssh_keys"]["ed25519_public"].split()[1] in \
                (vm.state_dir / "known_hosts.pub").read_text()  # the key vboxlab pins
            assert (vm.state_dir / "seed.iso").stat().st_mode & 0o777 == 0o600
            firmware_line = vm.succeed("test -d /sys/firmware/efi && echo uefi || echo bios")
            assert firmware_line == f"{firmware}\n"
            vm.stop()
