import xml.etree.ElementTree as ET

import pytest

from vboxlab.errors import ConfigError
from vboxlab.report.timeline import COLOURS, render_svg
from vboxlab.snapshots import SnapshotTree, check_name, safe_name


def branching_tree(path):
    tree = SnapshotTree(path)
    tree.add("A", size=10, test="t::a", kind="manual")
    tree.add("B", size=20, test="t::b", kind="manual")
    tree.restored("A")
    tree.add("C", size=30, test="t::c", kind="failure")
    return tree


def test_restore_then_take_makes_siblings(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    assert tree["B"].parent == "A" and tree["C"].parent == "A"
    assert [n.name for n in tree.children("A")] == ["B", "C"]
    assert tree.current == "C"
    assert [(d, n.name) for d, n in tree.walk()] == [(0, "A"), (1, "B"), (1, "C")]
    assert [n.name for n in tree.ancestors("C")] == ["A"]


def test_tree_outlives_its_process(tmp_path):
    branching_tree(tmp_path / "s.json")
    again = SnapshotTree(tmp_path / "s.json")
    assert again.current == "C" and [n.name for n in again] == ["A", "B", "C"]
    assert again["C"].kind == "failure" and again["B"].size == 20


def test_unknown_snapshot_lists_the_existing_ones(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    with pytest.raises(ConfigError, match="no snapshot 'Z'; snapshots: A, B, C"):
        tree["Z"]


def test_subtree_is_deepest_first_and_removal_needs_no_children(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    tree.restored("B")
    tree.add("D", size=1, test=None, kind="manual")
    assert tree.subtree("A") == ["D", "B", "C", "A"]
    with pytest.raises(ConfigError, match="still has children"):
        tree.removed("A")
    tree.removed("D")
    assert tree.current == "B"


def test_render_draws_branches_and_marks_current(tmp_path):
    text = branching_tree(tmp_path / "s.json").render()
    lines = text.splitlines()
    assert lines[0].startswith("A ")
    assert lines[1].startswith("├── B ")
    assert lines[2].startswith("└── C *")
    assert "failure" in lines[2] and "test t::c" in lines[2]


def test_reconcile_follows_the_disk(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    tree.reconcile({"B": 20, "C": 30, "X": 5})
    assert "A" not in tree
    assert tree["B"].parent is None and tree["C"].parent is None
    assert tree["X"].kind == "unknown"


def test_outcomes_colour_the_snapshots_of_a_test(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    tree.set_outcome("t::b", "passed")
    tree.set_outcome("t::c", "failed")
    assert (tree["A"].outcome, tree["B"].outcome, tree["C"].outcome) == (None, "passed", "failed")


@pytest.mark.parametrize("bad", ["", "-x", "a b", "x/y", "a" * 65])
def test_snapshot_names_are_checked(bad):
    with pytest.raises(ConfigError, match="invalid snapshot name"):
        check_name(bad)


@pytest.mark.parametrize("test_id", ["tests/test_x.py::test_y[param 1]",
                                     "a_very_long_module_name_and_more.py::test_y[param 1]",
                                     "___::___", "x" * 200])
def test_safe_name_turns_test_ids_into_snapshot_names(test_id):
    name = safe_name(test_id, 40)
    check_name(name)
    check_name(name + "-t12")
    assert len(name) <= 40


def test_timeline_svg_has_a_node_per_snapshot_and_edges_for_branches(tmp_path):
    tree = branching_tree(tmp_path / "s.json")
    tree.set_outcome("t::b", "passed")
    tree.set_outcome("t::c", "failed")
    svg = ET.fromstring(render_svg(tree, "web", "lab1"))
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = svg.findall("s:g[@class='snapshot']", ns)
    assert [g.get("data-name") for g in groups] == ["A", "B", "C"]
    fills = {g.get("data-name"): g.find("s:circle", ns).get("fill") for g in groups}
    assert fills == {"A": COLOURS[None], "B": COLOURS["passed"], "C": COLOURS["failed"]}
    edges = {(p.get("data-from"), p.get("data-to")) for p in svg.findall("s:path", ns)}
    assert edges == {("A", "B"), ("A", "C")}
    ys = {g.get("data-name"): float(g.find("s:circle", ns).get("cy")) for g in groups}
    assert ys["A"] == ys["B"] != ys["C"]  # the branch opens a lane of its own
