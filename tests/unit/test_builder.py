"""The lab builder's server side: checks as `vboxlab topology check`, errors at fields,
recommendations from the host's facts, exports that round-trip, and the CSP hashes of the
vendored vis-network file."""

import base64
import hashlib

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from vboxlab.cli import main
from vboxlab.web import builder
from vboxlab.web.app import STATIC, create_app
from vboxlab.web.guard import COOKIE, csrf_token
from vboxlab.web.vendor import injected_style_hashes

TWO = {"name": "two", "nodes": {"h1": {"template": "tiny"}, "h2": {"template": "tiny"}},
       "links": [{"between": ["h1", "h2"], "delay": "5ms"}]}


def test_a_drawn_lab_exports_yaml_the_command_line_accepts(tmp_path):
    answer = builder.check(model=TWO)
    assert answer["ok"] and answer["errors"] == []
    path = tmp_path / "two.yaml"
    path.write_text(answer["yaml"])
    checked = CliRunner().invoke(main, ["topology", "check", str(path)])
    assert checked.exit_code == 0, checked.output
    assert checked.output.strip() == answer["describe"]
    again = builder.check(text=answer["yaml"])  # import it back: the same text comes out
    assert again["ok"] and builder.to_yaml(again["model"]) == answer["yaml"]


@pytest.mark.parametrize(("change", "path", "words"), [
    ({"nodes": {"h1": {"memory": 10}}}, ["nodes", "h1", "memory"], "greater than or equal to 64"),
    ({"nodes": {"Bad_Name": {}}}, ["nodes"], "name 'Bad_Name'"),
    ({"links": [{"between": ["h1", "nowhere"]}]}, ["links", "0", "between"],
     "'nowhere' is neither a node nor a segment"),
    ({"links": [{"between": ["h1", "h2"], "delay": "-4ms"}]}, ["links", "0", "delay"],
     "is negative"),
    ({"segments": {"lan": {"subnet": "10.0.0.0/33"}}}, ["segments", "lan", "subnet"], "subnet"),
])
def test_errors_name_the_field_they_concern(change, path, words):
    answer = builder.check(model={**TWO, **change})
    assert not answer["ok"]
    [error] = answer["errors"]
    assert error["path"][:len(path)] == path
    assert words in error["message"]


def test_bad_drawings_are_refused_clearly():
    with pytest.raises(Exception, match="not both"):
        builder.check(model=TWO, text="name: x")
    huge = {"nodes": {f"h{i}": {} for i in range(600)}}
    with pytest.raises(Exception, match="over 500 nodes"):
        builder.check(model=huge)
    assert "not valid YAML" in builder.check(text="nodes: [")["errors"][0]["message"]


def test_recommendations_come_from_the_host(monkeypatch):
    facts = {"cores": 2, "memory_available_mb": 1000, "root": False, "kvm": False}
    monkeypatch.setattr(builder, "host_facts", lambda: facts)
    lab = {"name": "big",
           "segments": {"a": {}, "b": {"subnet": "10.9.0.0/24"}, "c": {}},
           "nodes": {"h1": {"template": "tiny", "memory": 900, "cpus": 4},
                     "h2": {"template": "no-such-template"},
                     "n1": {"provider": "netns"}},
           "links": [{"between": ["a", "b"]}, {"between": ["b", "c"]},
                     {"between": ["h1", "a"]}, {"between": ["h2", "b"]},
                     {"between": ["n1", "c"]}]}
    answer = builder.check(model=lab)
    assert answer["ok"], answer["errors"]
    kinds = {r["kind"]: r for r in answer["recommendations"]}
    assert set(kinds) == {"memory", "cpus", "template", "subnet", "root"}
    assert "1156 MiB together" in kinds["memory"]["text"]
    assert kinds["cpus"]["path"] == ["nodes", "h1", "cpus"]
    assert kinds["template"]["template"] == "no-such-template"
    looped = builder.check(model={**lab, "links": [*lab["links"], {"between": ["c", "a"]}]})
    assert looped["errors"][0]["path"] == ["links", "5", "between"]
    assert "closes a loop" in looped["errors"][0]["message"]  # an error, not advice
    assert kinds["root"]["path"] == ["nodes", "n1", "provider"]
    facts.update(root=True, memory_available_mb=10_000, cores=8)
    assert {r["kind"] for r in builder.check(model=TWO)["recommendations"]} <= {"template"}


def test_the_palette_lists_templates_with_their_state():
    from vboxlab.templates import TemplateRepository
    found = builder.palette(TemplateRepository())
    names = {t["name"]: t for t in found["templates"]}
    assert "tiny" in names and names["tiny"]["status"] in ("built", "not built", "stale")
    assert found["providers"] == ["qemu", "netns"] and found["host"]["cores"] >= 1


def test_the_csp_allows_exactly_the_styles_vis_network_injects():
    hashes = injected_style_hashes(STATIC / "vendor" / "vis-network.min.js")
    empty = base64.b64encode(hashlib.sha256(b"").digest()).decode()
    assert hashes[0] == f"'sha256-{empty}'"
    assert len(hashes) == 8  # the empty element, then its seven style sheets
    overlay = ".vis-overlay{bottom:0;left:0;position:absolute;right:0;top:0;z-index:10}"
    assert any(overlay in css for css in _injected_texts())
    assert "'unsafe-inline'" not in " ".join(hashes)


def _injected_texts():
    from vboxlab.web.vendor import _HEAD, _INJECTED, _unescape
    head = (STATIC / "vendor" / "vis-network.min.js").read_text()[:_HEAD]
    return [_unescape(m.group(1) or m.group(2)) for m in _INJECTED.finditer(head)]


def test_builder_routes_check_and_refuse(tmp_path):
    base = tmp_path / "labs"
    base.mkdir(mode=0o700)
    topologies = tmp_path / "topologies"
    topologies.mkdir()
    (topologies / "two.yaml").write_text(builder.to_yaml(TWO))
    app = create_app(base, "tok", {"testserver"}, topologies=topologies)
    with TestClient(app, follow_redirects=False) as client:
        client.cookies.set(COOKIE, "tok")
        headers = {"Origin": "http://testserver", "X-CSRF-Token": csrf_token("tok")}
        page = client.get("/builder")
        assert page.status_code == 200 and 'src="/static/vendor/vis-network.min.js"' in page.text
        assert client.get("/api/builder/examples").json() == {"two.yaml": builder.to_yaml(TWO)}
        checked = client.post("/api/builder/check", headers=headers, json={"model": TWO}).json()
        assert checked["ok"] and checked["yaml"] == builder.to_yaml(TWO)
        refused = client.post("/api/builder/deploy", headers=headers,
                              json={"yaml": "nodes: {Bad: {}}"})
        assert refused.status_code == 400 and "Bad" in refused.json()["error"]
        assert client.post("/api/builder/check", json={"model": TWO}).status_code == 403
