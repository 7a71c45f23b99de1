"""Traffic checks in the pytest plugin, end to end: the ids marker and fixture, flows in a
failing test's report, and capture rings, on namespace hosts (no VM needed)."""

import json

from vboxlab.pytest.policy import require_root

from .helpers import HTTP_SERVER, attack_topology

TOPOLOGY = attack_topology()
SERVER = HTTP_SERVER


def test_the_ids_marker_and_fixture_check_alerts_after_the_test(pytester, tmp_path):
    require_root("namespace hosts")
    pytester.makefile(".yaml", attack=TOPOLOGY)
    pytester.makefile(".rules", mine="""
        alert http any any -> any any (msg:"MINE admin page"; flow:established,to_server; \\
            http.uri; content:"/admin"; sid:2000001; rev:1;)
    """)
    pytester.makepyfile(f"""
        import pytest

        SERVER = {SERVER!r}

        def visit(lab, path):
            lab.node("target").succeed(SERVER)
            lab.node("attacker").execute(f"curl -s -o /dev/null http://10.70.0.10{{path}}")

        @pytest.mark.ids(expect=["sid:1000003"])
        @pytest.mark.lab(topology="attack.yaml")
        def test_expected_alert(network, lab):
            visit(lab, "/vboxlab-canary")

        @pytest.mark.ids()
        @pytest.mark.lab(topology="attack.yaml")
        def test_unexpected_alert(network, lab):
            visit(lab, "/vboxlab-canary")

        @pytest.mark.ids(rules=["mine.rules"], expect=[2000001, "sid:1000004"])
        @pytest.mark.lab(topology="attack.yaml")
        def test_missing_alert(network, lab):
            visit(lab, "/admin")

        @pytest.mark.ids()
        @pytest.mark.lab(topology="attack.yaml")
        def test_clean(network, lab):
            visit(lab, "/index.html")

        @pytest.mark.ids(expect=["sid:1000003"])
        @pytest.mark.lab(topology="attack.yaml")
        def test_fails_on_its_own(network, lab):
            visit(lab, "/vboxlab-canary")
            assert False, "deliberate"

        @pytest.mark.lab(topology="attack.yaml")
        def test_by_hand(network, lab, ids):
            visit(lab, "/")
            assert not ids.alerts()
            visit(lab, "/vboxlab-canary")
            report = ids.alerts("attacker", "lan")
            assert report.sids == {{1000003}} and report.links == ["attacker<->lan"]
            flows = network.flows()
            assert flows.between("attacker", "target").ports == {{80}}
    """)
    scans = tmp_path / "scans"
    result = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}",
                                           f"--lab-scan-dir={scans}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines([
        "*test_unexpected_alert*",
        "*1 unexpected IDS alert(s):",
        "*sid:1000003 VBOXLAB canary URI requested (TCP 10.70.0.1:* -> 10.70.0.10:80 on "
        "*<->lan, *<->lan at *",
        "*vboxlab IDS alerts: network attack*",
        "*test_missing_alert*",
        "*expected IDS alert(s) never raised: sid:1000004*",
    ])
    assert "sid:2000001" not in result.stdout.str().split("never raised")[1].splitlines()[0]
    own = result.stdout.str().split(" test_fails_on_its_own _")[1]  # failed on its own:
    assert "AssertionError: deliberate" in own  # its alerts are still in its report
    assert "1 IDS alert(s) on 2 link(s): sid:1000003 x1" in own.split("vboxlab flows")[0]
    result.stdout.fnmatch_lines(["*vboxlab flows*", "*tcp*http*attacker:*target:80*"])
    saved = json.loads(next(scans.glob("*test_unexpected_alert.ids.json")).read_text())
    [alert] = saved[0]["alerts"]  # one event, seen on both links
    assert alert["sid"] == 1000003 and len(alert["links"]) == 2
    junit = next(scans.glob("*test_unexpected_alert.ids.xml")).read_text()
    assert 'failures="1"' in junit


def test_a_capture_ring_bounds_what_a_long_test_keeps(pytester, tmp_path):
    require_root("namespace hosts")
    pytester.makefile(".yaml", attack=TOPOLOGY)
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.lab(topology="attack.yaml")
        def test_bulk(network, lab):
            lab.node("target").succeed({SERVER!r} + " && head -c 3000000 /dev/zero > big")
            lab.node("attacker").succeed("curl -sf -o /dev/null http://10.70.0.10/big")
            counters = network.link("target", "lan").counters()["a_to_b"]
            assert counters["ring_dropped_packets"] > 0
            files = network.capture_files("target", "lan")["a_to_b"]
            assert sum(f.stat().st_size for f in files) <= 400 * 1024 + 48
            assert network.flows().between("attacker", "target").ports == {{80}}
    """)
    result = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}",
                                           "--lab-capture-limit=400k", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    bad = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}",
                                        "--lab-capture-limit=lots", "-p", "no:cacheprovider")
    bad.stderr.fnmatch_lines(["*--lab-capture-limit (or ini lab_capture_limit) 'lots': size "
                              "'lots' is not a number with a unit*"])


def test_live_ids_sees_an_attack_while_the_test_runs_and_leaves_no_suricata(pytester, tmp_path):
    import subprocess

    require_root("namespace hosts")
    pytester.makefile(".yaml", attack=TOPOLOGY)
    pytester.makepyfile(f"""
        import time

        import pytest

        @pytest.mark.ids(expect=["sid:1000003"])
        @pytest.mark.lab(topology="attack.yaml")
        def test_live(network, lab, ids):
            lab.node("target").succeed({SERVER!r})
            assert not ids.alerts()
            lab.node("attacker").execute("curl -s -o /dev/null http://10.70.0.10/vboxlab-canary")
            alert = ids.wait_for("sid:1000003", timeout=20)  # raised while the test runs
            assert alert.target_port == 80
            assert "(live)" in ids.alerts().target

        @pytest.mark.ids()
        @pytest.mark.lab(topology="attack.yaml")
        def test_live_failure(network, lab):
            lab.node("target").succeed({SERVER!r})
            lab.node("attacker").execute("curl -s -o /dev/null http://10.70.0.10/vboxlab-canary")
    """)
    result = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}", "--lab-ids=live",
                                           "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_live_failure*", "*1 unexpected IDS alert(s):",
                                 "*sid:1000003 VBOXLAB canary URI requested*"])
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout == ""  # no Suricata (nor anything else) of the run is left
    offline = pytester.runpytest_subprocess(f"--lab-dir={tmp_path / 'labs'}", "-k",
                                            "test_live and not failure", "-p", "no:cacheprovider")
    offline.stdout.fnmatch_lines(["*ids.wait_for needs the live IDS: run with --lab-ids live*"])
