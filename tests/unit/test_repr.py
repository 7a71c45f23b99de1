"""Readable objects: repr() and str() say what a thing is."""

import pytest

from vboxlab.errors import MachineNotFound, VboxlabError
from vboxlab.lab import Lab
from vboxlab.net.plan import LinkPlan
from vboxlab.net.topology import Impairment
from vboxlab.snapshots import SnapshotTree


def test_a_snapshot_tree_shows_its_names_like_render(tmp_path):
    tree = SnapshotTree(tmp_path / "snapshots.json")
    assert repr(tree) == "<SnapshotTree (no snapshots)>"
    tree.add("clean", size=1024, test=None, kind="clean")
    tree.add("child", size=2048, test="t::one", kind="manual")
    tree.restored("clean")
    tree.add("sibling", size=0, test=None, kind="manual")
    assert repr(tree) == "<SnapshotTree clean, child, sibling; current sibling>"
    assert str(tree) == tree.render()
    assert "└── sibling" in str(tree) and "├── child" in str(tree)


def test_a_lab_says_its_id_machines_and_state(tmp_path):
    with Lab(base=tmp_path / "labs") as lab:
        with pytest.raises(MachineNotFound, match="has no machine 'web'; machines: none") as info:
            lab["web"]
        assert isinstance(info.value, KeyError) and isinstance(info.value, VboxlabError)
        text = repr(lab)
        assert text.startswith(f"<Lab {lab.id} open: 0 machines (none)")
        assert str(lab.dir) in text
    assert repr(lab).startswith(f"<Lab {lab.id} closed")


def test_a_link_says_both_directions(tmp_path):
    from vboxlab.net.network import LinkHandle

    plan = LinkPlan("a", "lan", "p0.in", "p0.out",
                    Impairment.model_validate({"delay": "10ms", "loss": "1%"}), Impairment())
    link = LinkHandle(fabric=None, plan=plan)  # type: ignore[arg-type]
    assert repr(link) == "<Link a<->lan: a->lan delay 10ms, loss 1%; lan->a clean>"
    assert str(link) == repr(link)
