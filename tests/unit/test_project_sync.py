"""A project's pins, topologies and profiles shared through a remote: two copies push and pull,
edits on both sides are refused instead of lost, and a hostile manifest cannot write outside
the project."""

import json

import pytest

from vboxlab.errors import ConfigError
from vboxlab.sync.project import ProjectStore
from vboxlab.sync.remotes import Remote
from vboxlab.sync.signing import SignatureError, SigningKey, TrustStore
from vboxlab.sync.store import SyncError, TemplateStore


@pytest.fixture
def team(tmp_path):
    alice = SigningKey.generate("alice@a", folder=tmp_path / "alice")
    trust = TrustStore(tmp_path / "trusted.json", own=None)
    trust.add(alice.public)
    store = ProjectStore(TemplateStore(Remote.parse(str(tmp_path / "remote"))))
    return store, alice, trust


def project(root, files):
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_two_copies_share_pins_topologies_and_profiles(team, tmp_path):
    store, alice, trust = team
    one = project(tmp_path / "one", {"vboxlab-templates.lock": "tiny = 1.0.0\n",
                                     "topologies/pair.yaml": "nodes: {a: {}, b: {}}\n",
                                     "profiles/web.yaml": "name: web\n",
                                     "topologies/notes.txt": "not shared",
                                     "src/app.py": "not shared"})
    pushed = store.push(one, "shop", alice)
    assert pushed.changed == ("profiles/web.yaml", "topologies/pair.yaml",
                              "vboxlab-templates.lock")
    two = tmp_path / "two"
    two.mkdir()
    pulled = store.pull(two, "shop", trust)
    assert sorted(pulled.changed) == sorted(pushed.changed)
    assert (two / "topologies" / "pair.yaml").read_text() == "nodes: {a: {}, b: {}}\n"
    assert not (two / "topologies" / "notes.txt").exists() and not (two / "src").exists()
    assert store.pull(two, "shop", trust).describe("pulled") == "project shop: up to date"
    # two changes a topology and removes the profile; one pulls both changes
    (two / "topologies" / "pair.yaml").write_text("nodes: {a: {}, b: {}, c: {}}\n")
    (two / "profiles" / "web.yaml").unlink()
    assert store.push(two, "shop", alice).removed == ("profiles/web.yaml",)
    again = store.pull(one, "shop", trust)
    assert again.changed == ("topologies/pair.yaml",) and again.removed == ("profiles/web.yaml",)
    assert not (one / "profiles" / "web.yaml").exists()
    log = store.store.log(trust)
    assert [(e.action, e.subject, e.trusted) for e in log] == [("push-project", "shop", True)] * 2


def test_edits_on_both_sides_are_refused_and_nothing_is_lost(team, tmp_path):
    store, alice, trust = team
    one = project(tmp_path / "one", {"topologies/pair.yaml": "v1\n"})
    store.push(one, "shop", alice)
    two = tmp_path / "two"
    two.mkdir()
    store.pull(two, "shop", trust)
    (two / "topologies" / "pair.yaml").write_text("v2 from two\n")
    store.push(two, "shop", alice)
    (one / "topologies" / "pair.yaml").write_text("v2 from one\n")
    with pytest.raises(SyncError, match=r"has changes this copy has not pulled \("
                                        r"topologies/pair.yaml: remote [0-9a-f]{12}, here"):
        store.push(one, "shop", alice)
    with pytest.raises(SyncError, match=r"changed here since the last sync .* nothing was "
                                        r"written"):
        store.pull(one, "shop", trust)
    assert (one / "topologies" / "pair.yaml").read_text() == "v2 from one\n"


def test_unsigned_and_hostile_project_manifests_are_refused(team, tmp_path):
    store, _, trust = team
    one = project(tmp_path / "one", {"topologies/pair.yaml": "v1\n"})
    store.push(one, "shop", None)
    two = tmp_path / "two"
    two.mkdir()
    with pytest.raises(SignatureError, match="is not signed"):
        store.pull(two, "shop", trust)
    manifest_path = tmp_path / "remote" / "projects" / "shop" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    digest = manifest["files"].pop("topologies/pair.yaml")
    for hostile in ("../../etc/cron.d/x.yaml", "topologies/../../x.yaml", "/etc/x.yaml",
                    ".bashrc"):
        manifest["files"] = {hostile: digest}
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(SyncError, match="is not a shared project file"):
            store.pull(two, "shop", None)
    assert not (tmp_path / "etc").exists() and list(two.iterdir()) == []
    (two / "topologies").symlink_to(tmp_path / "elsewhere")
    manifest["files"] = {"topologies/pair.yaml": digest}
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SyncError, match="symbolic link"):
        store.pull(two, "shop", None)
    with pytest.raises(ConfigError, match="project name 'Shop!'"):
        store.pull(two, "Shop!", None)
