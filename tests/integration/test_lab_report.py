"""The lab report of a real run, opened in Chromium; its Allure results, JUnit properties and
manifest; and a rerun from the manifest that repeats the seeds and outcomes."""

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

from vboxlab.pytest.policy import require_root

from .helpers import HTTP_SERVER, attack_topology

TOPOLOGY = attack_topology("delay: 3ms\n        loss: 0.5%")


def test_a_run_brings_home_one_report_with_everything_a_failure_needs(
        pytester, tmp_path, browser_page, request):
    require_root("namespace hosts")
    pytester.makefile(".yaml", attack=TOPOLOGY)
    pytester.makepyfile(f"""
        import pytest

        SERVER = {HTTP_SERVER!r}

        @pytest.mark.ids()
        @pytest.mark.lab(topology="attack.yaml")
        def test_probe(network, lab):
            lab.node("target").succeed(SERVER)
            lab.node("attacker").succeed("curl -s -o /dev/null http://10.70.0.10/vboxlab-canary")

        def test_tiny(vm):
            vm.succeed("echo hello from tiny")
            vm.snapshot("mid")

        @pytest.mark.skip(reason="not today")
        def test_later():
            pass
    """)
    report, allure = tmp_path / "report", tmp_path / "allure"
    result = pytester.runpytest_subprocess(
        f"--lab-dir={tmp_path / 'labs'}", f"--lab-report={report}", f"--alluredir={allure}",
        f"--junitxml={tmp_path / 'junit.xml'}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    result.stdout.fnmatch_lines(["*vboxlab: lab report*", f"{report}/index.html (rerun: *"])

    page = browser_page
    page.goto((report / "index.html").as_uri())
    assert page.inner_text("[data-total=total] b") == "3"
    assert page.inner_text("[data-total=failed] b") == "1"
    probe = page.locator("details[data-outcome=failed]")
    assert probe.get_attribute("data-nodeid").endswith("::test_probe")
    assert "1 unexpected IDS alert" in probe.locator("pre.message").inner_text()
    assert probe.locator("svg [data-node]").count() == 2  # the topology, drawn
    assert probe.locator("svg [data-link='target--lan']").get_attribute(
        "data-impairment") == "delay 3ms, loss 0.5%"
    assert probe.locator("tr.alert[data-sid='1000003']").count() == 1
    flows = probe.locator("tr.flow").all_inner_texts()
    assert any("http" in row and "target:80" in row for row in flows)
    assert "curl -s -o /dev/null http://10.70.0.10/vboxlab-canary" in probe.locator(
        "pre.console[data-machine=attacker]").inner_text()
    links = probe.locator("ul.files a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert any(h.endswith("attacker-to-lan.pcap") for h in hrefs)
    for href in hrefs:  # every file the page links to is there
        assert (report / href).is_file(), href
    tiny = page.locator("details[data-nodeid$='::test_tiny']")
    tiny.locator("summary").click()  # unfold the passed test's block
    digest = tiny.locator("tr[data-machine] code").first.inner_text()
    assert len(digest) == 16 and "tiny@" in tiny.locator("tr[data-machine]").first.inner_text()
    assert "manual" in tiny.locator("tr[data-snapshot=mid]").inner_text()  # its timeline slice
    assert page.locator("#labs .timeline svg").count() == 1  # the machine's whole tree
    # the filter by outcome
    page.click("button[data-filter=failed]")
    assert page.locator("details.test:not(.hidden)").count() == 1
    page.click("button[data-filter=passed]")
    visible = page.locator("details.test:not(.hidden)")
    assert visible.count() == 1 and visible.get_attribute("data-outcome") == "passed"
    page.click("button[data-filter=all]")
    shots = request.config.rootpath / "reports"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / "lab-report.png"), full_page=True)  # a CI artefact

    # Allure: labels and attachments of the failing topology test
    results = [json.loads(p.read_text()) for p in allure.glob("*-result.json")]
    failed = next(r for r in results if r["name"] == "test_probe")
    labels = {(label["name"], label["value"]) for label in failed["labels"]}
    assert {("topology", "attack"), ("provider", "netns")} <= labels
    attached = {a["name"]: a for a in failed["attachments"]}
    assert {"flows", "IDS alerts", "console of attacker", "topology attack",
            "attacker-to-lan.pcap"} <= set(attached)
    assert (allure / attached["attacker-to-lan.pcap"]["source"]).read_bytes()[:4] == \
        bytes.fromhex("d4c3b2a1")
    assert json.loads((allure / attached["IDS alerts"]["source"]).read_text())[0]["sid"] == 1000003
    tiny_result = next(r for r in results if r["name"] == "test_tiny")
    assert any(label["name"] == "template" and label["value"].startswith("tiny@")
               for label in tiny_result["labels"])

    # JUnit suite properties and the manifest agree on the seed and the template digest
    properties = {p.get("name"): p.get("value")
                  for p in ET.parse(tmp_path / "junit.xml").getroot().iter("property")}
    manifest = json.loads((report / "lab-manifest.json").read_text())
    [(probe_id, seed)] = manifest["seeds"].items()
    assert properties[f"vboxlab.seed.{probe_id}"] == str(seed)
    [(template, use)] = manifest["templates"].items()
    assert properties[f"vboxlab.template.{template}"] == use["digest"]
    assert manifest["tests"] == {probe_id: "failed", probe_id.replace("test_probe", "test_tiny"):
                                 "passed",
                                 probe_id.replace("test_probe", "test_later"): "skipped"}
    assert manifest["topologies"] == {"attack.yaml": manifest["topologies"]["attack.yaml"]}

    # a rerun from the manifest: same tests, same seeds, same outcomes
    again = tmp_path / "again"
    rerun = subprocess.run(
        [sys.executable, "-m", "vboxlab.cli", "report", "reproduce",
         str(report / "lab-manifest.json"), "--", f"--lab-dir={tmp_path / 'labs'}",
         f"--lab-report={again}", "-p", "no:cacheprovider"],
        cwd=pytester.path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 1, rerun.stdout[-3000:] + rerun.stderr[-3000:]  # probe fails again
    assert "templates pinned: tiny==" in rerun.stdout
    diff = subprocess.run([sys.executable, "-m", "vboxlab.cli", "report", "diff", str(report),
                           str(again)], capture_output=True, text=True, timeout=60)
    lines = diff.stdout.splitlines()
    assert lines and all(line.startswith("pytest arguments:") for line in lines), diff.stdout


def test_xdist_workers_reports_are_joined_into_one(pytester, tmp_path):
    require_root("namespace hosts")
    pytester.makefile(".yaml", attack=TOPOLOGY)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        @pytest.mark.lab(topology="attack.yaml")
        def test_ping(network, lab, n):
            lab.node("attacker").succeed("ping -c 1 target")
            assert n != 3, "deliberate"
    """)
    report = tmp_path / "report"
    result = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}", "-n", "2",
                                           f"--lab-report={report}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=1)
    data = json.loads((report / "report.json").read_text())
    assert data["totals"]["total"] == 4 and data["totals"]["failed"] == 1
    assert sorted(p.name for p in report.glob("gw*")) == ["gw0", "gw1"]
    failed = next(t for t in data["tests"] if t["outcome"] == "failed")
    assert failed["files"] and all((report / path).is_file() for _, path in failed["files"])
    manifest = json.loads((report / "lab-manifest.json").read_text())
    assert len(manifest["seeds"]) == 4 and len(manifest["tests"]) == 4
    assert "-n" in manifest["pytest_args"]  # the controller's arguments
    assert (report / "index.html").read_text().count('class="test"') == 4
