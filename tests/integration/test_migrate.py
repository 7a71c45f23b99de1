"""Machines leave for other hypervisors and images come in: every export format of a kept
lab's VM (written by ``vboxlab export``) is imported and booted again with its marker files,
the OVA is read back by libguestfs' importer (virt-v2v), and untrusted images are refused."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from vboxlab.errors import ConfigError, UntrustedImage
from vboxlab.lab import Lab
from vboxlab.migrate.importer import BootFiles, import_image
from vboxlab.migrate.ovf import read_descriptor
from vboxlab.pytest.policy import require_tool
from vboxlab.templates import TemplateRepository

from .helpers import cli, qemu_pids

KEEP_A_LAB = """
import sys
from pathlib import Path
from vboxlab.lab import Lab
with Lab(base=Path(sys.argv[1]), keep=True, accel="tcg") as lab:
    vm = lab.vm("src", memory=320, cpus=2)
    vm.succeed("echo one > /data/marker1; sync")  # exports of a snapshot hold its disk
    vm.snapshot("before")
    vm.succeed("echo two > /data/marker2")
print(lab.id)
"""
FORMATS = ("qcow2", "vmdk", "vdi", "vhdx", "ova")
QEMU_IMG_NAMES = {"qcow2": "qcow2", "vmdk": "vmdk", "vdi": "vdi", "vhdx": "vhdx"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A kept lab's running VM exported in every format (and at a snapshot) by the CLI."""
    folder = tmp_path_factory.mktemp("migrate")
    base = folder / "labs"
    base.mkdir(mode=0o700)
    made = subprocess.run([sys.executable, "-c", KEEP_A_LAB, str(base)], capture_output=True,
                          text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr
    lab_id = made.stdout.strip().splitlines()[-1]
    try:
        files = {}
        for fmt in FORMATS:
            files[fmt] = folder / f"src.{fmt}"
            out = cli("export", lab_id, "src", "--format", fmt, "-o", str(files[fmt]),
                      "--lab-dir", str(base)).stdout
            assert f"src: {fmt} written to {files[fmt]}" in out
        files["snapshot"] = folder / "before.vdi"
        cli("export", lab_id, "src", "--snapshot", "before", "--format", "vdi", "-o",
            str(files["snapshot"]), "--lab-dir", str(base))
        refused = cli("export", lab_id, "src", "--format", "vdi", "-o", str(files["vdi"]),
                      "--lab-dir", str(base), check=False)
        assert refused.returncode == 2 and "exists; choose another -o" in refused.stderr
        refused = cli("export", lab_id, "src", "--snapshot", "nosuch", "--format", "vdi",
                      "-o", str(folder / "x.vdi"), "--lab-dir", str(base), check=False)
        assert refused.returncode == 2 and "has no snapshot 'nosuch'; it has: before" in \
            refused.stderr
        assert not (folder / "x.vdi").exists()
        assert not list(folder.glob(".*partial")) and not list(folder.glob(".vboxlab-export*"))
        yield files
    finally:
        cli("clean", "--lab", lab_id, "--lab-dir", str(base))
        assert qemu_pids(str(base)) == []


@pytest.fixture(scope="module")
def tiny():
    return TemplateRepository().built("tiny")


def test_each_format_is_what_it_says_and_boots_again_with_its_marker_files(exported, tiny,
                                                                          tmp_path):
    for fmt, name in QEMU_IMG_NAMES.items():
        info = json.loads(subprocess.run(["qemu-img", "info", "--output=json",
                                          str(exported[fmt])], capture_output=True,
                                         text=True, check=True).stdout)
        assert info["format"] == name and "backing-filename" not in info, info
    repository = TemplateRepository(cache=tmp_path / "cache", search=[])
    boot = BootFiles(tiny.kernel, tiny.initrd, like=tiny)
    for fmt in ("vmdk", "vdi", "vhdx", "ova", "snapshot"):
        import_image(exported[fmt], f"from-{fmt}", "1.0.0", repository, boot)
    ova = repository.built("from-ova")
    assert ova.template.definition.resources.memory == 320  # from the OVF descriptor
    assert ova.template.definition.resources.cpus == 2
    assert ova.manifest["imported"]["foreign"] is True
    with Lab(base=tmp_path / "labs", repository=repository, accel="tcg") as lab:
        for fmt in ("vmdk", "vdi", "vhdx", "ova"):
            vm = lab.vm(f"b-{fmt}", template=f"from-{fmt}")
            assert vm.succeed("cat /data/marker1 /data/marker2") == "one\ntwo\n", fmt
            vm.stop()
        vm = lab.vm("b-snap", template="from-snapshot")  # the disk as it was at "before"
        assert vm.succeed("cat /data/marker1; test -e /data/marker2 || echo absent") == \
            "one\nabsent\n"


def test_the_ova_is_ovf_1_0_and_libguestfs_reads_it_back(exported, tmp_path):
    ova = exported["ova"]
    with tarfile.open(ova) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["src.ovf", "src.mf", "src-disk1.vmdk"]
        assert all(m.isfile() for m in members)
        data = {m.name: tar.extractfile(m).read() for m in members}
    assert ova.read_bytes()[257:265] == b"ustar\x0000"  # POSIX ustar, as OVF 1.0 asks
    manifest = data["src.mf"].decode().splitlines()
    assert manifest == [f"SHA1({name})= {hashlib.sha1(data[name]).hexdigest()}"
                        for name in ("src.ovf", "src-disk1.vmdk")]
    machine = read_descriptor(data["src.ovf"], "src.ovf")
    assert (machine.cpus, machine.memory_mib, machine.networks) == (2, 320, ("nat",))
    assert machine.disk_size == len(data["src-disk1.vmdk"])
    assert data["src-disk1.vmdk"][:4] == b"KDMV"
    v2v = require_tool("virt-v2v", "virt-v2v")
    shown = subprocess.run([v2v, "-i", "ova", str(ova), "--print-source"], capture_output=True,
                           text=True, timeout=120, check=False,
                           env={"LIBGUESTFS_BACKEND": "direct", "PATH": "/usr/bin:/bin"})
    assert shown.returncode == 0, shown.stderr
    text = " ".join(shown.stdout.split())
    for fact in ("source name: src", "memory: 335544320 (bytes)", "nr vCPUs: 2",
                 "0 [ide]", '"nat" [e1000]'):
        assert fact in text, shown.stdout
    # one byte of the disk changed: both readers refuse the archive
    damaged = tmp_path / "damaged.ova"
    with tarfile.open(ova) as tar, tarfile.open(damaged, "w", format=tarfile.USTAR_FORMAT) \
            as out:
        for member in tar.getmembers():
            body = tar.extractfile(member).read()
            if member.name.endswith(".vmdk"):
                body = body[:-1] + bytes([body[-1] ^ 1])
            out.addfile(member, io.BytesIO(body))
    refused = subprocess.run([v2v, "-i", "ova", str(damaged), "--print-source"],
                             capture_output=True, text=True, timeout=120, check=False,
                             env={"LIBGUESTFS_BACKEND": "direct", "PATH": "/usr/bin:/bin"})
    assert refused.returncode != 0 and "checksum" in refused.stderr.lower(), refused.stderr
    repository = TemplateRepository(cache=tmp_path / "cache", search=[])
    tiny = TemplateRepository().built("tiny")
    with pytest.raises(ConfigError, match=r"src-disk1.vmdk has SHA1 .* damaged or altered"):
        import_image(damaged, "bad", "1.0.0", repository, BootFiles(tiny.kernel, tiny.initrd))
    assert repository.installed() == [] and not list(repository.images.glob(".import-*"))


def test_untrusted_images_are_refused_before_qemu_reads_them(exported, tiny, tmp_path):
    repository = TemplateRepository(cache=tmp_path / "cache", search=[])
    boot = BootFiles(tiny.kernel, tiny.initrd, like=tiny)
    descriptor = tmp_path / "shadow.vmdk"  # a VMDK whose data "is" a host file
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                          'createType="monolithicFlat"\nRW 16 FLAT "/etc/shadow" 0\n')
    with pytest.raises(UntrustedImage, match="VMDK descriptor that keeps its data in other"):
        import_image(descriptor, "shadow", "1.0.0", repository, boot)
    child = tmp_path / "child.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "vdi", "-b",
                    str(exported["vdi"]), str(child)], check=True)
    with pytest.raises(UntrustedImage, match="names a backing file"):
        import_image(child, "child", "1.0.0", repository, boot)
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * 65536)
    with pytest.raises(ConfigError, match=r"not an image vboxlab recognises.*--format raw"):
        import_image(junk, "junk", "1.0.0", repository, boot)
    with pytest.raises(UntrustedImage, match="--format raw given but it is a vdi image"):
        import_image(exported["vdi"], "x", "1.0.0", repository, boot, image_format="raw")
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "vdi", "-O", "raw", str(exported["vdi"]),
                    str(raw)], check=True)
    done = import_image(raw, "from-raw", "1.0.0", repository, boot, image_format="raw")
    assert (done.folder / "disk.qcow2").is_file()
    sneaky = tmp_path / "sneaky.ova"
    with tarfile.open(sneaky, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(exported["vdi"], arcname="../escape.vmdk")
    with pytest.raises(ConfigError, match="not a plain file at the top"):
        import_image(sneaky, "sneaky", "1.0.0", repository, boot)
    assert [b.template.name for b in repository.installed()] == ["from-raw"]
    assert not list(repository.images.glob(".import-*"))
    shutil.rmtree(tmp_path / "cache")


def test_the_command_line_imports_an_image_like_a_template(exported, tmp_path):
    env = {**os.environ, "VBOXLAB_CACHE": str(tmp_path / "cache")}
    # tiny must be found for --like: link the real cache's tiny into this one
    (tmp_path / "cache" / "templates").mkdir(parents=True)
    tiny = TemplateRepository().built("tiny")
    shutil.copytree(tiny.folder, tmp_path / "cache" / "templates" / "tiny" /
                    tiny.template.version)
    result = subprocess.run([sys.executable, "-m", "vboxlab.cli", "templates", "import-image",
                             str(exported["vhdx"]), "--name", "mine", "--version", "2.0.0",
                             "--like", "tiny", "--memory", "384"], capture_output=True,
                            text=True, env=env, timeout=120, check=False)
    assert result.returncode == 0 and "mine 2.0.0: imported" in result.stdout, result.stderr
    manifest = json.loads((tmp_path / "cache" / "templates" / "mine" / "2.0.0" /
                           "manifest.json").read_text())
    assert manifest["definition"]["resources"]["memory"] == 384
    assert manifest["source"]["format"] == "vhdx" and manifest["source"]["like"].startswith(
        "tiny@")
    result = subprocess.run([sys.executable, "-m", "vboxlab.cli", "templates", "import-image",
                             str(exported["vhdx"]), "--name", "bare", "--version", "1.0.0"],
                            capture_output=True, text=True, env=env, timeout=120, check=False)
    assert result.returncode == 2 and "--like TEMPLATE, or --kernel and" in \
        result.stderr
