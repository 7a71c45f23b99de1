"""Template archives: round trip between repositories, and every kind of bad archive refused."""

import gzip
import io
import json
import tarfile

import pytest

from vboxlab.templates.archive import ArchiveError, export_template, import_template

from .helpers import install


def test_an_exported_template_imports_elsewhere_verified_and_usable(source, target, tmp_path):
    archive = export_template(source.built("shared"), tmp_path / "shared.tar.gz")
    result = import_template(archive, target)
    assert (result.name, result.version, result.already_present) == ("shared", "1.2.0", False)
    built = target.built("shared@1.2.0")
    for name in ("vmlinuz", "initrd.cpio", "disk.qcow2"):
        assert (built.folder / name).read_bytes() == (source.built("shared").folder /
                                                      name).read_bytes()
    assert built.manifest["imported"]["from"] == "shared.tar.gz"
    assert import_template(archive, target).already_present  # a second import changes nothing
    assert not list(target.images.glob(".import-*"))


def write_tar(path, entries):
    """entries: (name, bytes | None, kind) with kind file, symlink, hardlink or dir."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data, kind in entries:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, data.decode()
                tar.addfile(info)
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, data.decode()
                tar.addfile(info)
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def entries_of(source):
    built = source.built("shared")
    out = [("vboxlab-template/manifest.json", (built.folder / "manifest.json").read_bytes(),
            "file")]
    for name in sorted(built.manifest["files"]):
        out.append((f"vboxlab-template/{name}", (built.folder / name).read_bytes(), "file"))
    return out


@pytest.mark.parametrize("change, message", [
    (lambda e: [*e[:1], (e[1][0], b"tampered" + e[1][1], "file"), *e[2:]],
     r"disk.qcow2: SHA-256 .* does not match .* corrupted or was tampered with"),
    (lambda e: [*e, ("/etc/cron.d/evil", b"x", "file")], "absolute path"),
    (lambda e: [*e, ("vboxlab-template/../../evil", b"x", "file")], "climbs out with '..'"),
    (lambda e: [*e, ("vboxlab-template/link", b"/etc/passwd", "symlink")], "is a link"),
    (lambda e: [*e, ("vboxlab-template/hard", b"/etc/shadow", "hardlink")], "is a link"),
    (lambda e: [*e, e[1]], "appears twice"),
    (lambda e: [*e, ("vboxlab-template/extra.bin", b"x", "file")], "not listed in the manifest"),
    (lambda e: e[:-1], "files listed in vboxlab-template/manifest.json are missing: vmlinuz"),
    (lambda e: e[1:] + e[:1],
     "first entry of vboxlab-template/ must be vboxlab-template/manifest.json"),
    (lambda e: [*e, ("vboxlab-base-1/manifest.json", e[0][1], "file")], "must come last"),
    (lambda e: [("vboxlab-base-9/manifest.json", e[0][1], "file"), *e], "is outside"),
    (lambda e: [("vboxlab-base-1/manifest.json", e[0][1], "file")], "no vboxlab-template/"),
    (lambda e: [("vboxlab-template/manifest.json", b"{not json", "file"), *e[1:]],
     "not valid JSON"),
])
def test_bad_archives_are_refused_naming_what_is_wrong(source, target, tmp_path, change,
                                                       message):
    archive = write_tar(tmp_path / "bad.tar.gz", change(entries_of(source)))
    with pytest.raises(ArchiveError, match=message):
        import_template(archive, target)
    assert target.installed() == []
    assert not list(target.images.glob(".import-*"))


def test_a_manifest_cannot_smuggle_paths_through_its_names(source, target, tmp_path):
    entries = entries_of(source)
    manifest = json.loads(entries[0][1])
    manifest["name"] = "../../etc"
    entries[0] = (entries[0][0], json.dumps(manifest).encode(), "file")
    with pytest.raises(ArchiveError, match="is not a template name"):
        import_template(write_tar(tmp_path / "bad.tar.gz", entries), target)
    manifest["name"], manifest["files"] = "shared", {"../x": "0" * 64}
    entries[0] = (entries[0][0], json.dumps(manifest).encode(), "file")
    with pytest.raises(ArchiveError, match="bad file name"):
        import_template(write_tar(tmp_path / "bad2.tar.gz", entries), target)


def test_garbage_is_not_an_archive(target, tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip at all")
    with pytest.raises(ArchiveError, match="not a readable template archive"):
        import_template(junk, target)


def test_the_same_version_with_other_files_needs_force(source, target, tmp_path):
    archive = export_template(source.built("shared"), tmp_path / "shared.tar.gz")
    install(target, "shared", "1.2.0")
    (target.images / "shared" / "1.2.0" / "vmlinuz").write_bytes(b"local change")
    manifest_path = target.images / "shared" / "1.2.0" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["vmlinuz"] = "0" * 64
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="already installed with different files"):
        import_template(archive, target)
    import_template(archive, target, force=True)
    assert (target.images / "shared" / "1.2.0" / "vmlinuz").read_bytes() == \
        (source.images / "shared" / "1.2.0" / "vmlinuz").read_bytes()
