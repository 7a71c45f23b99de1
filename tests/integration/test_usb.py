"""USB writing on loop devices: detection, refusals, sparse images, faults, CLI; ISOs read back."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vboxlab.media import build_iso
from vboxlab.media.tree import MediaError
from vboxlab.media.usb import (
    Overrides,
    UnsafeTarget,
    UsbWriteError,
    device_source,
    write_image,
)
from vboxlab.pytest.policy import require_tool

pytestmark = pytest.mark.root
MiB = 1 << 20


def run(*argv):
    return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout


@pytest.fixture
def make_loop(tmp_path, mounts):  # after mounts: loops are detached before filesystems unmount
    """make_loop(size, backing_dir=None) -> /dev/loopN over a sparse file; all detached after."""
    require_tool("losetup", "mount")
    made = []

    def make(size, folder=None):
        backing = (folder or tmp_path) / f"stick{len(made)}.img"
        with backing.open("wb") as out:
            out.truncate(size)
        path = run("losetup", "--find", "--show", str(backing)).strip()
        made.append(path)
        return Path(path)

    yield make
    for path in reversed(made):
        subprocess.run(["umount", "-q", str(path)], check=False)
        subprocess.run(["losetup", "-d", str(path)], check=False)


@pytest.fixture
def mounts(tmp_path):
    done = []

    def mount(device, folder, *options):
        folder.mkdir(parents=True, exist_ok=True)
        run("mount", *options, str(device), str(folder))
        done.append(folder)
        return folder

    yield mount
    for folder in reversed(done):
        if subprocess.run(["umount", str(folder)], check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", str(folder)], check=False)


def image_with_holes(path, data_mib=6, zero_mib=10, hole_mib=8):
    """Random data, then a run of written zeros, then a hole, then data again."""
    with path.open("wb") as out:
        out.write(os.urandom(data_mib * MiB))
        out.write(bytes(zero_mib * MiB))
        out.seek(hole_mib * MiB, os.SEEK_CUR)
        out.write(os.urandom(MiB))
    return path


def device_bytes(device, count):
    with open(device, "rb") as dev:
        return dev.read(count)


def test_disks_are_listed_with_what_they_hold(make_loop):
    loop = make_loop(32 * MiB)
    devices = {d.path: d for d in device_source().devices()}
    found = devices[loop]
    assert found.transport == "loop" and not found.removable and found.size == 32 * MiB
    assert found.backing_file.endswith("stick0.img")
    assert found.identity == (found.backing_file, 32 * MiB)  # a loop device has no serial
    assert int(run("blockdev", "--getsize64", str(loop))) == found.size  # an independent reader
    root = next(d for d in devices.values() if "/" in d.mountpoints)
    assert root.path.is_block_device() and root.size > found.size and root.transport != "loop"


def test_the_image_is_written_byte_for_byte_and_zero_runs_are_not_sent(make_loop, tmp_path):
    loop = make_loop(64 * MiB)
    with open(loop, "wb") as dev:  # a used stick: garbage everywhere
        dev.write(os.urandom(40 * MiB))
    image = image_with_holes(tmp_path / "sparse.img")
    seen = []
    result = write_image(image, loop, overrides=Overrides(allow_fixed=True),
                         progress=lambda done, total: seen.append(done))
    size = image.stat().st_size
    assert device_bytes(loop, size) == image.read_bytes()  # zeros really are zeros
    assert result.zero_bytes == 18 * MiB and result.data_bytes == 7 * MiB
    assert seen[-1] == size and result.sha256
    past = device_bytes(loop, 40 * MiB)[size:]
    assert past != bytes(40 * MiB - size)  # past the image: untouched


def test_unsafe_targets_are_refused_with_every_reason(make_loop, tmp_path, mounts):
    small = make_loop(3 * MiB)  # the image below is 4 MiB
    image = image_with_holes(tmp_path / "img", 1, 1, 1)
    with pytest.raises(UnsafeTarget, match=r"not a removable disk.*--allow-fixed-disk"):
        write_image(image, small)
    with pytest.raises(UnsafeTarget, match=r"smaller .* than the image"):
        write_image(image, small, overrides=Overrides(allow_fixed=True))
    holder = make_loop(64 * MiB)
    run("mkfs.ext4", "-q", str(holder))
    inside = mounts(holder, tmp_path / "mnt")
    stored = image_with_holes(inside / "img", 1, 1, 1)
    with pytest.raises(UnsafeTarget) as refused:
        write_image(stored, holder, overrides=Overrides(allow_fixed=True))
    assert "is stored on it" in str(refused.value) and "mounted filesystems" in str(refused.value)
    root = next(d for d in device_source().devices() if "/" in d.mountpoints)
    with pytest.raises(UnsafeTarget, match="holds the root filesystem"):
        write_image(image, root.path, overrides=Overrides(allow_fixed=True, allow_mounted=True))
    with pytest.raises(MediaError, match="not a block device"):
        write_image(image, tmp_path / "img")


def test_a_device_that_changed_since_it_was_chosen_is_not_written(make_loop, tmp_path):
    loop = make_loop(16 * MiB)
    image = image_with_holes(tmp_path / "img", 1, 1, 1)
    chosen = device_source().device(loop).identity
    with pytest.raises(UsbWriteError, match="not the device that was chosen"):
        write_image(image, loop, expect=("some-other-stick", chosen[1]),
                    overrides=Overrides(allow_fixed=True))
    assert device_bytes(loop, MiB) == bytes(MiB)  # nothing was written


def test_a_device_failing_mid_write_is_reported_never_a_success(make_loop, tmp_path, mounts):
    small_fs = mounts("tmpfs", tmp_path / "tiny", "-t", "tmpfs", "-o", "size=12m")
    loop = make_loop(64 * MiB, small_fs)  # claims 64 MiB, can hold 12
    image = tmp_path / "random.img"
    image.write_bytes(os.urandom(40 * MiB))
    with pytest.raises(UsbWriteError, match=r"incomplete image|verification failed"):
        write_image(image, loop, overrides=Overrides(allow_fixed=True))


def test_the_usb_commands(make_loop, tmp_path):
    loop = make_loop(32 * MiB)
    image = image_with_holes(tmp_path / "img", 2, 2, 2)
    vboxlab = [sys.executable, "-m", "vboxlab.cli"]
    listed = run(*vboxlab, "usb", "list", "--all")
    assert str(loop) in listed and "loop" in listed
    assert str(loop) not in run(*vboxlab, "usb", "list")  # removable disks only
    refused = subprocess.run([*vboxlab, "usb", "write", str(image), str(loop), "--yes"],
                             capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and "not a removable disk" in refused.stderr
    declined = subprocess.run([*vboxlab, "usb", "write", str(image), str(loop),
                               "--allow-fixed-disk"], input="n\n", capture_output=True,
                              text=True, check=False)
    assert declined.returncode != 0 and "Erase" in declined.stdout
    assert device_bytes(loop, MiB) == bytes(MiB)
    done = run(*vboxlab, "usb", "write", str(image), str(loop), "--yes", "--allow-fixed-disk")
    assert "verified, sha256" in done
    assert device_bytes(loop, image.stat().st_size) == image.read_bytes()


def test_an_iso_reads_back_in_xorriso_with_every_name_and_byte(tmp_path):
    """An independent reader (xorriso; this kernel has no iso9660 to mount with) gets the tree."""
    xorriso = require_tool("xorriso", "xorriso")
    source = tmp_path / "src"
    deep = source.joinpath(*[f"d{i}" for i in range(10)])
    deep.mkdir(parents=True)
    (deep / "deepest file with spaces.txt").write_text("deep\n")
    (source / ("long-" * 30 + ".txt")).write_bytes(os.urandom(100000))
    (source / "CamelCase.Ext").write_text("case\n")
    (source / "run.sh").write_text("#!/bin/sh\n")
    (source / "run.sh").chmod(0o750)
    (source / "to-run").symlink_to("run.sh")
    built = build_iso(source, tmp_path / "out.iso", label="READBACK")
    assert run("blkid", "-o", "value", "-s", "LABEL", str(built.path)).strip() == "READBACK"
    extracted = tmp_path / "out"
    subprocess.run([xorriso, "-osirrox", "on", "-indev", str(built.path), "-extract", "/",
                    str(extracted)], capture_output=True, check=True)

    def same(cmp):
        assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, cmp.report()
        assert not cmp.funny_files
        for sub in cmp.subdirs.values():
            same(sub)

    # ten levels exceed ISO 9660's eight: Rock Ridge parks them in a hidden .rr_moved
    assert (extracted / ".rr_moved").is_dir()
    same(filecmp.dircmp(source, extracted, ignore=[".rr_moved"]))
    assert filecmp.cmp(deep / "deepest file with spaces.txt",
                       extracted.joinpath(*[f"d{i}" for i in range(10)],
                                          "deepest file with spaces.txt"), shallow=False)
    assert (extracted / "run.sh").stat().st_mode & 0o777 == 0o750
    assert os.readlink(extracted / "to-run") == "run.sh"
