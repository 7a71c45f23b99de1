"""Layered templates without booting: definitions, the chain of bases in the repository,
trust checks on a layer's disk, archives with and without their bases, QEMU's and
libvirt's explicit chain, and the tree ``templates list`` draws."""

import json
import re
import subprocess

import pytest

from vboxlab.errors import ConfigError, TemplateNotBuilt, UntrustedImage
from vboxlab.providers.libvirt_xml import domain_xml
from vboxlab.providers.qemu_argv import QemuLaunch, build_argv
from vboxlab.pytest.policy import missing_capability, require_tool
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import ArchiveError, export_template, import_template
from vboxlab.templates.chain import check_template_disks, disk_chain
from vboxlab.templates.cli import as_tree
from vboxlab.templates.definition import effective_definition, load_template

from .helpers import install, install_layer
from .test_definition import write as write_definition

LAYER = """
name = "dev-demo"
version = "1.0.0"
description = "a layer"
base = "demo-base>=1.0,<2"
[build]
recipe = "layer"
packages = ["git"]
commands = ["echo hi > /etc/hi"]
services = ["ssh.service"]
"""


def write(tmp_path, text, folder="dev-demo"):
    return write_definition(tmp_path, text, folder)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """``base`` 1.0.0 installed, ``layer`` 1.0.0 over it, ``top`` 1.0.0 over that."""
    monkeypatch.setenv("VBOXLAB_PINS", str(tmp_path / "pins.lock"))
    repository = TemplateRepository(cache=tmp_path / "cache", search=[])
    install(repository, "base", "1.0.0")
    install_layer(repository, "layer", "1.0.0", "base", "1.0.0")
    install_layer(repository, "top", "1.0.0", "layer", "1.0.0")
    return repository


def test_a_layer_definition_loads_and_inherits_boot_and_access_from_its_base(tmp_path):
    layer = load_template(write(tmp_path, LAYER)).definition
    assert layer.base == "demo-base>=1.0,<2" and layer.build.commands == ("echo hi > /etc/hi",)
    base = load_template(write(tmp_path, """
        name = "demo-base"
        version = "1.0.0"
        description = "its base"
        [resources]
        memory = 512
        [boot]
        cmdline = "root=/dev/vda console=ttyS0"
        files_into = "rootfs"
        [access]
        channels = ["agent", "ssh"]
        [build]
        recipe = "debootstrap"
        """, folder="demo-base")).definition
    merged = effective_definition(layer, base)
    assert merged.boot == base.boot and merged.access.channels == ["agent", "ssh"]
    assert merged.resources.memory == 512  # the layer gave none: its base's
    assert merged.name == "dev-demo" and merged.build.recipe == "layer"


@pytest.mark.parametrize(("change", "message"), [
    (('base = "demo-base>=1.0,<2"\n', ""), "recipe 'layer' needs base"),
    (('recipe = "layer"', 'recipe = "debootstrap"'), "only for \\[build\\] recipe = \"layer\""),
    (('base = "demo-base>=1.0,<2"', 'base = "dev-demo"'), "cannot be layered on itself"),
    (('base = "demo-base>=1.0,<2"', 'base = "demo base"'), "field base"),
    (('packages = ["git"]', 'packages = ["git; rm -rf /"]'), "not a Debian package name"),
    (('services = ["ssh.service"]', 'services = ["ssh; reboot"]'), "not a systemd unit"),
    (("[build]", '[boot]\ncmdline = "quiet"\n[build]'), r"\[boot\]: a layer boots its base's"),
    (("[build]", '[access]\nuser = "me"\n[build]'), r"remove \[access\]"),
    (("[build]", '[build]\nfiles = "../../etc"'), "folder inside the template's folder"),
])
def test_bad_layer_definitions_are_refused_naming_the_field(tmp_path, change, message):
    folder = write(tmp_path, LAYER.replace(*change))
    with pytest.raises(ConfigError, match=message) as caught:
        load_template(folder)
    assert str(folder / "template.toml") in str(caught.value)


def test_the_repository_resolves_a_chain_of_layers(repo):
    top = repo.built("top")
    assert [(b.template.name, b.template.version) for b in top.bases] == [
        ("layer", "1.0.0"), ("base", "1.0.0")]
    assert top.base_ref == ("layer", "1.0.0")
    assert disk_chain(top) == (str(repo.images / "layer/1.0.0/disk.qcow2"),
                               str(repo.images / "base/1.0.0/disk.qcow2"))
    check_template_disks(top)  # each names exactly its base
    assert [b.template.name for b in repo.dependents("base", "1.0.0")] == ["layer"]


def test_a_base_cannot_be_removed_while_a_layer_needs_it(repo):
    with pytest.raises(ConfigError, match=re.escape("base 1.0.0 is the base of layer@1.0.0; "
                                                    "remove that first")):
        repo.remove("base", "1.0.0")
    assert repo.built("top")  # nothing was touched
    repo.remove("top", "1.0.0")
    repo.remove("layer", "1.0.0")
    repo.remove("base", "1.0.0")
    assert repo.installed() == []


def test_prune_keeps_a_base_that_a_kept_layer_needs(repo):
    install(repo, "base", "2.0.0")  # the newest base: 1.0.0 would go, but "layer" needs it
    assert repo.prune(dry_run=True) == []
    install_layer(repo, "layer", "2.0.0", "base", "2.0.0")
    install_layer(repo, "top", "2.0.0", "layer", "2.0.0")
    doomed = [(b.template.name, b.template.version) for b in repo.prune()]
    assert doomed == [("top", "1.0.0"), ("layer", "1.0.0"), ("base", "1.0.0")]
    assert {(b.template.name, b.template.version) for b in repo.installed()} == {
        ("base", "2.0.0"), ("layer", "2.0.0"), ("top", "2.0.0")}


def test_a_layer_whose_base_was_replaced_or_removed_does_not_boot(repo):
    manifest_path = repo.images / "base/1.0.0/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["disk.qcow2"] = "0" * 64  # rebuilt: other contents
    manifest_path.write_text(json.dumps(manifest))
    for name in ("layer", "top"):
        with pytest.raises(TemplateNotBuilt, match=re.escape(
                "layer over base 1.0.0, which was rebuilt or replaced since; rebuild it")):
            repo.built(name)
    subprocess.run(["rm", "-rf", str(repo.images / "base")], check=True)
    with pytest.raises(TemplateNotBuilt, match=re.escape(
            "which is not installed; build or pull base@1.0.0")):
        repo.built("layer")


@pytest.mark.parametrize("backing", ["/etc/shadow", "../../base/1.0.0/../../../etc/shadow",
                                     "../../other/1.0.0/disk.qcow2"])
def test_a_layer_naming_anything_but_its_base_is_refused_at_boot(repo, backing):
    folder = repo.images / "evil" / "1.0.0"
    install_layer(repo, "evil", "1.0.0", "base", "1.0.0", backing=backing)
    assert folder.is_dir()
    with pytest.raises(UntrustedImage, match=f"names a backing file '{backing}' where its "
                                             "base is '../../base/1.0.0/disk.qcow2'"):
        check_template_disks(repo.built("evil"))


def test_a_layer_archive_names_its_base_and_imports_only_where_the_base_is(repo, tmp_path):
    archive = export_template(repo.built("layer"), tmp_path / "layer.tar.gz")
    empty = TemplateRepository(cache=tmp_path / "empty", search=[])
    with pytest.raises(ArchiveError, match=re.escape(
            "layer over base 1.0.0, which is not installed here: import or pull base@1.0.0 "
            "first, or export the layer again with --with-base")):
        import_template(archive, empty)
    assert empty.installed() == []
    other = TemplateRepository(cache=tmp_path / "other", search=[])
    install(other, "base", "1.0.0")  # same name and version, other contents
    (other.images / "base/1.0.0/vmlinuz").write_bytes(b"another kernel")
    manifest = json.loads((other.images / "base/1.0.0/manifest.json").read_text())
    manifest["files"]["vmlinuz"] = "1" * 64
    (other.images / "base/1.0.0/manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArchiveError, match="installed here has other contents"):
        import_template(archive, other)


def test_an_archive_with_its_bases_imports_the_whole_chain(repo, tmp_path):
    archive = export_template(repo.built("top"), tmp_path / "top.tar.gz", with_bases=True)
    empty = TemplateRepository(cache=tmp_path / "empty", search=[])
    result = import_template(archive, empty)
    assert (result.name, result.version) == ("top", "1.0.0")
    top = empty.built("top")
    assert [b.template.name for b in top.bases] == ["layer", "base"]
    check_template_disks(top)
    again = import_template(archive, empty)  # idempotent: everything already there
    assert again.already_present


def test_qemu_and_libvirt_open_the_chain_explicitly_read_only(repo, tmp_path):
    top = repo.built("top")
    launch = QemuLaunch(name="vm", binary="qemu-system-x86_64", accel="tcg", memory=256,
                        cpus=1, overlay=str(tmp_path / "o.qcow2"), base_disk=str(top.disk),
                        base_format="qcow2", console="c", qmp="q", ssh_port=22,
                        kernel="k", initrd="i", base_chain=disk_chain(top))
    nodes = [json.loads(a) for a in build_argv(launch) if a.startswith("{")]
    formats = {n["node-name"]: n for n in nodes if n["driver"] == "qcow2"}
    assert formats["base0-2"]["backing"] is None and formats["base0-2"]["read-only"]
    assert formats["base0-1"]["backing"] == "base0-2" and formats["base0-1"]["read-only"]
    assert formats["base0"]["backing"] == "base0-1" and formats["base0"]["read-only"]
    assert formats["disk0"]["backing"] == "base0"
    files = {n["node-name"]: n["filename"] for n in nodes if n["driver"] == "file"}
    assert files["base0-2-file"] == str(repo.images / "base/1.0.0/disk.qcow2")
    assert QemuLaunch.from_dict(launch.to_dict()) == launch
    xml = domain_xml(launch, "vboxlab-vm", owner="o")
    chain = xml.split("<backingStore", 4)
    assert len(chain) == 5 and "<backingStore />" in xml  # three images, then nothing
    assert xml.index(str(top.disk)) < xml.index(disk_chain(top)[0]) < \
        xml.index(disk_chain(top)[1])


def test_templates_list_draws_layers_under_their_bases():
    rows = [["base", "1.0.0", "x"], ["dev-a", "1.0.0", "x"], ["dev-b", "1.0.0", "x"],
            ["tiny", "1.0.0", "x"], ["dev-c", "1.0.0", "x"]]
    parents = {("dev-a", "1.0.0"): ("base", "1.0.0"), ("dev-b", "1.0.0"): ("base", "1.0.0"),
               ("dev-c", "1.0.0"): ("dev-a", "1.0.0"), ("base", "1.0.0"): None}
    assert [r[0] for r in as_tree(rows, parents)] == [
        "base", "├─ dev-a", "│  └─ dev-c", "└─ dev-b", "tiny"]


def test_qemu_img_reads_a_layer_without_opening_its_base(repo, tmp_path):
    """The trust check asks qemu-img about the layer alone: a base that is a FIFO would
    hang it if it were opened."""
    fifo = tmp_path / "cache/templates/fifo/1.0.0"
    fifo.mkdir(parents=True)
    subprocess.run(["mkfifo", str(fifo / "disk.qcow2")], check=True)
    layer = tmp_path / "l.qcow2"
    subprocess.run([require_tool("qemu-img", "qemu-utils"), "create", "-q", "-f", "qcow2",
                    "-u", "-F", "qcow2", "-b", "../../fifo/1.0.0/disk.qcow2", str(layer), "1M"],
                   check=True)
    from vboxlab.templates.trust import check_disk

    check_disk(layer, what="probe", backing="../../fifo/1.0.0/disk.qcow2")


def test_sync_pushes_the_bases_first_and_pulls_a_missing_base_first(repo, tmp_path):
    from vboxlab.sync.remotes import Remote
    from vboxlab.sync.store import TemplateStore

    store = TemplateStore(Remote.parse(str(tmp_path / "remote")))
    store.push(repo.built("top"), None)
    assert store.templates() == [("base", "1.0.0"), ("layer", "1.0.0"), ("top", "1.0.0")]
    empty = TemplateRepository(cache=tmp_path / "empty", search=[])
    said: list[str] = []
    store.pull("top", "1.0.0", empty, None, progress=said.append)
    assert [b.template.name for b in empty.built("top").bases] == ["layer", "base"]
    assert any("is a layer over layer 1.0.0: pulling that first" in s for s in said)
    check_template_disks(empty.built("top"))


def test_staged_changes_list_new_files_deletions_and_replaced_folders(tmp_path):
    """An overlayfs upper folder as apt leaves it: new files, a whiteout (a deleted file),
    an opaque folder (replaced whole); the guest's command empties, deletes, unpacks."""
    import os

    from vboxlab.templates.layer_stage import StagedChanges, _walk, apply_commands

    if os.geteuid() != 0:
        missing_capability("whiteouts and trusted.* attributes need root")
    upper = tmp_path / "upper"
    (upper / "usr/bin").mkdir(parents=True)
    (upper / "usr/bin/tool").write_text("#!/bin/sh\n")
    (upper / "usr/lib").mkdir()
    (upper / "usr/lib/current").symlink_to("/usr/lib/x86_64-linux-gnu")
    os.mknod(upper / "usr/bin/old", 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
    (upper / "etc/conf.d").mkdir(parents=True)
    os.setxattr(upper / "etc/conf.d", "trusted.overlay.opaque", b"y")
    entries, deleted, opaque = _walk(upper)
    assert sorted(entries) == ["etc", "etc/conf.d", "usr", "usr/bin", "usr/bin/tool", "usr/lib",
                               "usr/lib/current"]
    assert deleted == ["/usr/bin/old"] and opaque == ["/etc/conf.d"]
    script = apply_commands(StagedChanges(tmp_path / "c.tar", tuple(deleted), tuple(opaque)),
                            "/run/x/changes.tar", "/run/x/deleted")
    assert "if [ -d /etc/conf.d ]; then find /etc/conf.d -mindepth 1 -delete; fi" in script
    assert "xargs -0 -r rm -rf -- < /run/x/deleted" in script
    assert "--xattrs --xattrs-include='*'" in script
