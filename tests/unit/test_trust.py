"""Template trust: a disk that names a host file, a manifest with two identities, and where
a template comes from are refused or recorded on import, and checked again on every boot."""

import hashlib
import json
import subprocess

import pytest

from vboxlab.errors import UntrustedImage
from vboxlab.lab import Lab
from vboxlab.pytest.policy import require_tool
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import ArchiveError, export_template, import_template
from vboxlab.templates.trust import check_disk, is_foreign, local_origin

from .helpers import install, small_qcow2
from .test_archive import write_tar


def qemu_img(*args):
    subprocess.run([require_tool("qemu-img", "qemu-utils"), *args], check=True,
                   capture_output=True)


def archive_with(source, tmp_path, *, disk=None, manifest_changes=None, drop=()):
    """The source template as an archive, with its disk or manifest replaced."""
    built = source.built("shared")
    manifest = dict(built.manifest)
    files = dict(manifest["files"])
    data = {name: (built.folder / name).read_bytes() for name in files}
    if disk is not None:
        data["disk.qcow2"] = disk.read_bytes()
        files["disk.qcow2"] = hashlib.sha256(data["disk.qcow2"]).hexdigest()
    for name in drop:
        files.pop(name)
        data.pop(name)
    manifest["files"] = files
    manifest.update(manifest_changes or {})
    entries = [("vboxlab-template/manifest.json", json.dumps(manifest).encode(), "file")]
    entries += [(f"vboxlab-template/{name}", data[name], "file") for name in sorted(files)]
    return write_tar(tmp_path / "evil.tar.gz", entries)


@pytest.mark.parametrize("host_file", ["/etc/shadow", "/dev/vda"])
def test_a_disk_naming_a_host_file_as_backing_is_refused_with_its_name(source, target, tmp_path,
                                                                       host_file):
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", host_file, "-F", "raw", str(evil), "1M")
    with pytest.raises(ArchiveError, match=f"names a backing file '{host_file}'"):
        import_template(archive_with(source, tmp_path, disk=evil), target)
    assert target.installed() == []
    assert not list(target.images.glob(".import-*"))


def test_a_disk_with_an_external_data_file_is_refused(source, target, tmp_path):
    evil = tmp_path / "evil.qcow2"
    data_file = tmp_path / "data.raw"
    qemu_img("create", "-q", "-f", "qcow2", "-o", f"data_file={data_file},data_file_raw=on",
             str(evil), "1M")
    with pytest.raises(ArchiveError, match="external data file"):
        import_template(archive_with(source, tmp_path, disk=evil), target)


def test_a_disk_of_another_format_is_refused(source, target, tmp_path):
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 65536)
    with pytest.raises(ArchiveError, match="is not a qcow2 image"):
        import_template(archive_with(source, tmp_path, disk=raw), target)
    with pytest.raises(ArchiveError, match="disk_format 'raw' is not one of qcow2"):
        import_template(archive_with(source, tmp_path, manifest_changes={"disk_format": "raw"}),
                        target)


def test_a_manifest_whose_definition_has_another_identity_is_refused(source, target, tmp_path):
    built = source.built("shared")
    other = {**built.manifest["definition"], "name": "tiny"}
    with pytest.raises(ArchiveError, match=r"says shared 1.2.0 but its definition says tiny"):
        import_template(archive_with(source, tmp_path, manifest_changes={"definition": other}),
                        target)
    newer = {**built.manifest["definition"], "version": "9.0.0"}
    with pytest.raises(ArchiveError, match=r"its definition says shared 9.0.0"):
        import_template(archive_with(source, tmp_path, manifest_changes={"definition": newer}),
                        target)
    broken = {**built.manifest["definition"], "resources": {"memory": "lots"}}
    with pytest.raises(ArchiveError, match=r"definition field resources.memory"):
        import_template(archive_with(source, tmp_path, manifest_changes={"definition": broken}),
                        target)


def test_an_archive_without_its_kernel_or_initrd_is_refused(source, target, tmp_path):
    with pytest.raises(ArchiveError, match=r"does not list vmlinuz, initrd.cpio"):
        import_template(archive_with(source, tmp_path, drop=("vmlinuz", "initrd.cpio")), target)


def test_import_records_whether_a_template_was_built_elsewhere(source, target, tmp_path):
    here = archive_with(source, tmp_path, manifest_changes={"origin": local_origin()})
    import_template(here, target)
    assert not is_foreign(target.built("shared@1.2.0").manifest)
    other = TemplateRepository(cache=tmp_path / "c", search=[])
    elsewhere = archive_with(source, tmp_path, manifest_changes={"origin": "another-machine"})
    import_template(elsewhere, other)
    assert is_foreign(other.built("shared@1.2.0").manifest)
    assert not is_foreign(source.built("shared").manifest)  # built here, never imported


def test_check_disk_accepts_a_plain_qcow2_and_reads_no_named_file(tmp_path):
    check_disk(small_qcow2(tmp_path / "ok.qcow2"))
    fifo = tmp_path / "fifo"
    subprocess.run(["mkfifo", str(fifo)], check=True)
    evil = tmp_path / "evil.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", str(fifo), "-F", "raw", str(evil), "1M")
    with pytest.raises(UntrustedImage, match="names a backing file"):
        check_disk(evil)  # refused from the header alone: the FIFO is never opened


def test_a_template_whose_disk_changed_after_import_is_refused_at_boot(tmp_path, monkeypatch):
    """Checked on every boot: a header rewritten in the cache is caught before QEMU runs."""
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    repo = TemplateRepository(cache=tmp_path / "cache", search=[])
    folder = install(repo, "shared", "1.2.0")
    qemu_img("rebase", "-u", "-f", "qcow2", "-b", "/etc/shadow", "-F", "raw",
             str(folder / "disk.qcow2"))
    require_tool("qemu-system-x86_64", "qemu-system-x86")
    with Lab(base=tmp_path / "labs", repository=repo, template="shared") as lab, \
            pytest.raises(UntrustedImage, match="names a backing file '/etc/shadow'"):
        lab.vm("victim")
    assert list((tmp_path / "labs").iterdir()) == []


def test_an_archive_too_big_for_the_disk_is_refused_before_writing(source, target, tmp_path,
                                                                   monkeypatch):
    import vboxlab.templates.archive as archive_module

    archive = export_template(source.built("shared"), tmp_path / "shared.tar.gz")
    monkeypatch.setattr(archive_module, "FREE_SPACE_RESERVE", 1 << 62)
    with pytest.raises(ArchiveError, match=r"MiB free .* free some space"):
        import_template(archive, target)
    assert target.installed() == [] and not list(target.images.glob(".import-*"))


def test_a_disk_cut_short_is_refused(tmp_path):
    short = tmp_path / "short.qcow2"
    short.write_bytes(b"QFI\xfb\x00\x00\x00\x03")
    with pytest.raises(UntrustedImage, match="is cut short"):
        check_disk(short)
