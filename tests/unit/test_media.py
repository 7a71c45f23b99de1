"""ISO images from folders: names, refusals, identifiers, boot specs, seeds; read back."""

import io
import os
import socket

import pycdlib
import pytest

from vboxlab.media import BootSpec, MediaError, bootloaders, build_iso
from vboxlab.media.bootspec import grub_config, isolinux_config
from vboxlab.media.seed import build_seed
from vboxlab.media.tree import scan, walk


def read_iso(path):
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    return iso


def rr_bytes(iso, rr_path):
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, rr_path=rr_path)
    return out.getvalue()


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "src"
    deep = root.joinpath(*[f"level{i}" for i in range(12)])
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("twelve levels down\n")
    long_name = "a-rather-long-file-name-that-iso9660-level-three-would-never-hold-" + "x" * 40
    (root / f"{long_name}.conf").write_text("long\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "script.sh").chmod(0o755)
    (root / "big.bin").write_bytes(os.urandom(3 << 20))
    (root / "link-to-script").symlink_to("script.sh")
    (root / "a.txt").write_text("lower\n")
    (root / "A-TXT").mkdir()
    return root


def test_an_iso_holds_the_tree_with_real_names_modes_links_and_deep_folders(tree, tmp_path):
    out = tmp_path / "out.iso"
    seen = []
    result = build_iso(tree, out, label="TEST_1", progress=lambda d, t: seen.append((d, t)))
    assert result.size == out.stat().st_size and result.files == 5
    assert seen and seen[-1][0] == seen[-1][1] == result.size
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    iso = read_iso(out)
    try:
        deep = "/" + "/".join(f"level{i}" for i in range(12)) + "/bottom.txt"
        assert rr_bytes(iso, deep) == b"twelve levels down\n"
        long_name = next(p.name for p in tree.iterdir() if p.name.startswith("a-rather"))
        assert rr_bytes(iso, f"/{long_name}") == b"long\n"
        assert rr_bytes(iso, "/big.bin") == (tree / "big.bin").read_bytes()
        record = iso.get_record(rr_path="/script.sh")
        assert record.rock_ridge.get_file_mode() & 0o777 == 0o755
        link = iso.get_record(rr_path="/link-to-script")
        assert link.rock_ridge.symlink_path() == b"script.sh"
        # Joliet names (what Windows shows) are the real names, cut to 64 characters
        joliet = {c.file_identifier().decode("utf-16-be") for c in
                  iso.list_children(joliet_path="/")} - {"\x00", "\x01"}
        assert "script.sh" in joliet and long_name[:64] in joliet
        assert iso.pvd.volume_identifier.rstrip() == b"TEST_1"
    finally:
        iso.close()


def test_iso9660_names_are_made_unique(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    for name in ("notes.txt", "Notes.Txt!", "notes-txt"):
        (root / name).write_text(name)
    names = sorted(e.iso_path for e in walk(scan(root)))
    assert len(set(names)) == 3
    assert all(p.upper() == p and ";1" in p for p in names)


def bound_socket(path):
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # the socket file stays after close


@pytest.mark.parametrize("make, expected", [
    (lambda root: (root / "out").symlink_to("../elsewhere"), "outside the source tree"),
    (lambda root: (root / "abs").symlink_to("/etc/passwd"), "absolute path /etc/passwd"),
    (lambda root: os.mkfifo(root / "pipe"), "pipe is a FIFO"),
    (lambda root: bound_socket(root / "sock"), "sock is a socket"),
])
def test_what_cannot_go_on_an_image_is_refused_by_name(tmp_path, make, expected):
    root = tmp_path / "src"
    root.mkdir()
    make(root)
    with pytest.raises(MediaError, match=expected):
        build_iso(root, tmp_path / "x.iso")
    assert not (tmp_path / "x.iso").exists()
    assert not list(tmp_path.glob(".x.iso*"))


@pytest.mark.root  # mknod of a device file needs root
def test_device_files_are_refused(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    os.mknod(root / "null", 0o600 | 0o020000, os.makedev(1, 3))
    with pytest.raises(MediaError, match="null is a device file"):
        scan(root)


def test_names_that_collide_in_joliet_are_refused_naming_both(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    (root / "README").write_text("1")
    (root / "readme").write_text("2")
    with pytest.raises(MediaError, match=r"readme and .*README collide in the Joliet names"):
        build_iso(root, tmp_path / "x.iso")
    build_iso(root, tmp_path / "x.iso", joliet=False)  # fine without Joliet
    prefix = "p" * 64
    (root / "README").unlink()
    (root / f"{prefix}-one").write_text("1")
    (root / f"{prefix}-two").write_text("2")
    with pytest.raises(MediaError, match="cut to 64 characters"):
        scan(root)


@pytest.mark.parametrize("label, expected", [
    ("", "is empty"), ("A" * 33, "longer than 32"), ("MY DISK", "characters ISO 9660 does not"),
    ("dvd-1", "characters ISO 9660 does not"),
])
def test_bad_volume_labels_are_refused(tmp_path, label, expected):
    (tmp_path / "src").mkdir()
    with pytest.raises(MediaError, match=expected):
        build_iso(tmp_path / "src", tmp_path / "x.iso", label=label)


def test_other_identifiers_are_checked(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(MediaError, match=r"publisher .* longer than 128"):
        build_iso(tmp_path / "src", tmp_path / "x.iso", publisher="p" * 129)
    with pytest.raises(MediaError, match=r"preparer .* characters ISO 9660 does not allow"):
        build_iso(tmp_path / "src", tmp_path / "x.iso", preparer="tab\there")


def test_boot_spec_files_are_validated_with_file_and_field(tmp_path):
    spec = tmp_path / "boot.toml"
    spec.write_text('default = "rescue"\n[[entry]]\nname = "lab"\nkernel = "vmlinuz"\n')
    with pytest.raises(MediaError, match=r"boot.toml: .*default 'rescue' is not an entry"):
        BootSpec.from_file(spec)
    spec.write_text('[[entry]]\nname = "lab"\nkernel = "vmlinuz"\nappend = "a; reboot"\n')
    with pytest.raises(MediaError, match=r"boot.toml: entry.0.append: .*\[';'\]"):
        BootSpec.from_file(spec)
    spec.write_text('[[entry]]\nname = "lab"\nkernel = "../../etc/passwd"\n')
    with pytest.raises(MediaError, match=r"entry\.0\.kernel"):
        BootSpec.from_file(spec)
    spec.write_text("timeout = \n")
    with pytest.raises(MediaError, match="not valid TOML"):
        BootSpec.from_file(spec)
    with pytest.raises(MediaError, match="no such boot spec"):
        BootSpec.from_file(tmp_path / "missing.toml")


def test_menus_are_rendered_for_isolinux_and_grub():
    spec = BootSpec.model_validate({
        "default": "rescue", "timeout": 2.5,
        "entry": [{"name": "lab", "title": "Lab", "kernel": "boot/vmlinuz",
                   "initrd": "boot/initrd.img", "append": "console=ttyS0 role=a"},
                  {"name": "rescue", "kernel": "boot/vmlinuz", "append": "single"}]})
    bios = isolinux_config(spec)
    assert "UI menu.c32" in bios and "TIMEOUT 25" in bios and "DEFAULT rescue" in bios
    assert "  KERNEL /boot/vmlinuz\n  INITRD /boot/initrd.img\n  APPEND console=ttyS0 role=a" \
        in bios
    efi = grub_config(spec, "isolinux/vboxlab-x.id")
    assert "search --no-floppy --set=root --file /isolinux/vboxlab-x.id" in efi
    assert "set default=1" in efi and "set timeout=2.5" in efi
    assert "  linux /boot/vmlinuz console=ttyS0 role=a\n  initrd /boot/initrd.img" in efi
    at_once = isolinux_config(BootSpec.single("k", None, "x=1"))
    assert "UI menu.c32" not in at_once and "DEFAULT linux" in at_once


def test_a_boot_entry_must_point_at_a_file_of_the_image(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(MediaError, match="kernel 'boot/vmlinuz' is not a file of the image"):
        build_iso(tmp_path / "src", tmp_path / "x.iso", boot=BootSpec.single("boot/vmlinuz"))


def test_a_missing_bootloader_file_names_its_debian_package(tmp_path, monkeypatch):
    monkeypatch.setitem(bootloaders.BIOS_FILES, "isolinux.bin",
                        (tmp_path / "isolinux.bin", "isolinux"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "k").write_text("kernel")
    with pytest.raises(MediaError, match="apt-get install isolinux"):
        build_iso(tmp_path / "src", tmp_path / "x.iso",
                  boot=BootSpec.single("k", uefi=False))
    assert not (tmp_path / "x.iso").exists()


def test_a_cloud_init_seed_has_the_cidata_label_and_its_three_files(tmp_path):
    out = tmp_path / "seed.iso"
    build_seed(out, user_data={"packages": ["nginx"]}, hostname="web1",
               network_config={"version": 2, "ethernets": {"eth0": {"dhcp4": True}}})
    iso = read_iso(out)
    try:
        assert iso.pvd.volume_identifier.rstrip() == b"cidata"
        assert rr_bytes(iso, "/user-data").startswith(b"#cloud-config\npackages:\n- nginx")
        meta = rr_bytes(iso, "/meta-data").decode()
        assert "instance-id: vboxlab-" in meta and "local-hostname: web1" in meta
        assert b"dhcp4: true" in rr_bytes(iso, "/network-config")
    finally:
        iso.close()


@pytest.mark.parametrize("kwargs, expected", [
    ({"user_data": "packages: [x]\n"}, "must start with one of #cloud-config"),
    ({"user_data": "#cloud-config\n[1, 2"}, "not valid YAML"),
    ({"user_data": "#cloud-config\n", "network_config": {"ethernets": {}}},
     "needs 'version: 1' or 'version: 2'"),
    ({"user_data": "#cloud-config\n", "meta_data": "- a list"}, "meta-data must be a YAML mapping"),
])
def test_bad_seed_input_is_refused(tmp_path, kwargs, expected):
    with pytest.raises(MediaError, match=expected):
        build_seed(tmp_path / "seed.iso", **kwargs)


def test_device_detection_elsewhere_than_linux_says_it_is_not_supported(monkeypatch):
    from vboxlab.media.usb import UnsupportedPlatform, device_source

    monkeypatch.setattr("sys.platform", "darwin")
    with pytest.raises(UnsupportedPlatform, match=r"Linux .* only; on darwin"):
        device_source()
