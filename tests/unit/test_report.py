"""Lab reports without a lab: the topology picture, the HTML page, manifests, diff and rerun."""

import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from vboxlab.errors import ConfigError, TemplateNotBuilt
from vboxlab.net import load_topology
from vboxlab.report.html import RunReport, render_report, write_report
from vboxlab.report.manifest import (
    TemplateUse,
    diff_manifests,
    new_manifest,
    option_args,
    plan_reproduction,
    read_manifest,
)
from vboxlab.report.records import LinkRecord, MachineRecord, NetworkRecord, TestRecord
from vboxlab.report.topology_svg import render_topology_svg
from vboxlab.templates import TemplateRepository
from vboxlab.templates.repository import file_sha256

ROOT = Path(__file__).resolve().parents[2]


class Elements(HTMLParser):
    """Every element with its attributes, for checks on the page's structure."""

    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def having(self, attribute, value=None):
        return [a for _, a in self.found if attribute in a and (value is None or
                                                                a[attribute] == value)]


def parse(text):
    parser = Elements()
    parser.feed(text)
    return parser


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "topologies").glob("*.yaml")))
def test_every_shipped_topology_draws_its_nodes_segments_and_labelled_links(name):
    topology = load_topology(ROOT / "topologies" / f"{name}.yaml")
    svg = parse(render_topology_svg(topology))
    assert {a["data-node"] for a in svg.having("data-node")} == set(topology.nodes)
    assert {a["data-segment"] for a in svg.having("data-segment")} == set(topology.spec.segments)
    links = {a["data-link"]: a["data-impairment"] for a in svg.having("data-link")}
    assert len(links) == len(topology.links)
    if name == "star":
        assert links["client2--lan"] == "delay 30ms, loss 1%, rate 10mbit"
        assert links["server--lan"] == "clean"


def record(n, outcome="passed"):
    flows = [{"protocol": "tcp", "app": "http", "client": "10.0.0.1", "client_port": 40000 + i,
              "server": "10.0.0.2", "server_port": 80, "client_node": "c", "server_node": "s",
              "packets_to_server": 5, "packets_to_client": 4, "bytes_to_server": 500,
              "bytes_to_client": 4000, "links": ["c<->lan", "s<->lan"]} for i in range(30)]
    topology = load_topology(ROOT / "topologies" / "star.yaml")
    return TestRecord(
        f"tests/test_x.py::test_{n}", outcome, 1.5, phase="call" if outcome != "passed" else None,
        message="AssertionError: <b>not</b> escaped?" if outcome == "failed" else "",
        machines=[MachineRecord("server", "qemu", "tiny", "1.0.0", "ab" * 32,
                                "\n".join(f"console line {i}" for i in range(40)))],
        network=NetworkRecord("star", "topologies/star.yaml", 7, render_topology_svg(topology),
                              [LinkRecord("server<->lan", "clean", "clean",
                                          {"a_to_b": {"tx_packets": 9, "drop_loss": 1},
                                           "b_to_a": {"tx_packets": 8}})], flows, 30),
        alerts=[{"sid": 1000003, "signature": "VBOXLAB canary URI requested", "source": "10.0.0.1",
                 "source_port": 40000, "target": "10.0.0.2", "target_port": 80,
                 "links": ["c<->lan"]}] if outcome == "failed" else [])


def test_the_page_has_totals_a_filter_and_a_block_per_test_with_its_parts(tmp_path):
    manifest = new_manifest(["-x"], tmp_path)
    run = RunReport(manifest, [record(1), record(2, "failed"), record(3, "skipped")])
    page = write_report(tmp_path / "report", run)
    text = page.read_text()
    html = parse(text)
    assert [a["data-filter"] for a in html.having("data-filter")] == [
        "all", "failed", "passed", "skipped"]
    tests = html.having("data-outcome")
    assert [t["data-outcome"] for t in tests] == ["passed", "failed", "skipped"]
    assert "open" in tests[1] and "open" not in tests[0]  # failures start unfolded
    assert len(html.having("class", "flow")) == 90 and len(html.having("data-sid")) == 1
    assert "&lt;b&gt;not&lt;/b&gt; escaped?" in text  # test output cannot inject markup
    assert "<script src" not in text and "http://" not in text.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")  # self-contained: nothing fetched
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["totals"]["failed"] == 1 and saved["totals"]["alerts"] == 1
    assert read_manifest(tmp_path / "report").pytest_args == ["-x"]


def test_fifty_tests_each_get_a_block_and_the_totals_add_up(tmp_path):
    # (how long it takes is benchmarks/netsec.py's business)
    run = RunReport(new_manifest([], tmp_path), [record(i, "failed" if i % 7 == 0 else "passed")
                                                 for i in range(50)])
    html = parse(render_report(run))
    assert len(html.having("data-nodeid")) == 50
    assert run.totals()["failed"] == 8 and run.totals()["passed"] == 42
    assert len(html.having("data-sid")) == 8


def test_a_manifest_from_elsewhere_is_checked_field_by_field(tmp_path):
    path = tmp_path / "lab-manifest.json"
    good = json.loads(new_manifest([], tmp_path).model_dump_json())
    for broken, message in (
            ({**good, "seeds": {"t": "x"}}, "field seeds.t"),
            ({**good, "templates": {"a": {"name": "Bad Name", "version": "1.0.0",
                                          "digest": "0" * 64}}}, "invalid template name"),
            ({**good, "templates": {"a": {"name": "tiny", "version": "1.0.0",
                                          "digest": "xyz"}}}, "digest"),
            ({**good, "surprise": 1}, "field surprise"),
            ({**good, "format": 99}, "format 99"),
            ({**good, "tests": {"-p evil::x": "passed"}}, "not a test id"),
            ({**good, "tests": {"/etc/x.py::t": "passed"}}, "not a test id"),
            ({**good, "seeds": {"../up.py::t": 1}}, "not a test id")):
        path.write_text(json.dumps(broken))
        with pytest.raises(ConfigError, match=message):
            read_manifest(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not a readable lab manifest"):
        read_manifest(path)
    with pytest.raises(ConfigError, match="no such lab manifest"):
        read_manifest(tmp_path / "absent.json")
    with pytest.raises(ConfigError, match="not a --lab"):
        option_args({"--junitxml": "x"})
    assert option_args({"--lab-template": "debian-12", "--lab-rules": ["a", "b"],
                        "--lab-compliance-as-tests": True}) == [
        "--lab-compliance-as-tests", "--lab-rules=a", "--lab-rules=b",
        "--lab-template=debian-12"]


def test_diff_names_what_changed_between_two_runs(tmp_path):
    a = new_manifest(["-x"], tmp_path)
    b = a.model_copy(deep=True)
    assert diff_manifests(a, b) == []
    b.tests = {"t::one": "failed"}
    a.tests = {"t::one": "passed", "t::two": "passed"}
    b.seeds = {"t::one": 8}
    a.seeds = {"t::one": 7}
    a.templates = {"tiny@1.0.0": TemplateUse(name="tiny", version="1.0.0", digest="a" * 64)}
    b.templates = {"tiny@1.0.0": TemplateUse(name="tiny", version="1.0.0", digest="b" * 64)}
    b.kernel = "other"
    lines = diff_manifests(a, b)
    assert f"kernel: {a.kernel} -> other" in lines
    assert "template tiny@1.0.0: content differs (aaaaaaaaaaaa -> bbbbbbbbbbbb)" in lines
    assert "seed t::one: 7 -> 8" in lines
    assert "test t::one: passed -> failed" in lines and "test t::two: passed -> (absent)" in lines


def test_a_rerun_needs_the_same_template_builds_and_topologies(tmp_path):
    tiny = TemplateRepository().built("tiny")
    (tmp_path / "net.yaml").write_text("nodes: {a: {}}\nlinks: []\n")
    manifest = new_manifest([], tmp_path, {"--lab-template": "tiny"})
    manifest.tests = {"test_x.py::test_a": "passed"}
    manifest.seeds = {"test_x.py::test_a": 5}
    manifest.topologies = {"net.yaml": file_sha256(tmp_path / "net.yaml")}
    key = f"tiny@{tiny.template.version}"
    manifest.templates = {key: TemplateUse(name="tiny", version=tiny.template.version,
                                           digest=tiny.manifest_digest)}
    plan = plan_reproduction(manifest, ["-q"], rootdir=tmp_path)
    assert plan.argv[1:] == ["-m", "pytest", "test_x.py::test_a", "--lab-template=tiny", "-q"]
    assert plan.pins == {"tiny": tiny.template.version} and plan.seeds == {"test_x.py::test_a": 5}
    (tmp_path / "net.yaml").write_text("nodes: {b: {}}\nlinks: []\n")
    with pytest.raises(ConfigError, match=r"topology net\.yaml changed since the run"):
        plan_reproduction(manifest, [], rootdir=tmp_path)
    assert plan_reproduction(manifest, [], rootdir=tmp_path, force=True).warnings
    manifest.templates[key] = TemplateUse(name="tiny", version=tiny.template.version,
                                          digest="0" * 64)
    with pytest.raises(TemplateNotBuilt, match="a different build"):
        plan_reproduction(manifest, [], rootdir=tmp_path, force=True)
    manifest.templates = {"nosuch@1.0.0": TemplateUse(name="nosuch", version="1.0.0",
                                                      digest="0" * 64)}
    with pytest.raises(TemplateNotBuilt, match=r"nosuch@1\.0\.0 .* is not installed here"):
        plan_reproduction(manifest, [], rootdir=tmp_path, force=True)
