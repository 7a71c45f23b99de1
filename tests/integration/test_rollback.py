"""Rollback between tests, snapshot schedules and the snapshot CLI, through whole sessions."""

import re
import xml.etree.ElementTree as ET

from .helpers import cli, qemu_pids

NS = {"s": "http://www.w3.org/2000/svg"}


def test_each_test_sees_a_clean_machine_without_a_reboot(pytester, base):
    pytester.makepyfile("""
        import pytest

        def test_a_dirties_everything(vm):
            vm.succeed("echo dirty > /data/disk-file; echo dirty > /tmp/mem-file")
            vm.succeed("(sleep 900 >/dev/null 2>&1 &)")
            vm.succeed("pidof sleep")

        def test_b_sees_none_of_it(vm):
            vm.fail("test -e /data/disk-file")
            vm.fail("test -e /tmp/mem-file")
            vm.fail("pidof sleep")
            assert vm.console_log.read_text().count("tiny 1.0.0 ready") == 1

        def test_c_kills_the_machine(vm):
            vm.kill()

        def test_d_still_gets_a_clean_machine(vm):
            assert vm.succeed("echo ok") == "ok\\n"
            vm.fail("test -e /data/disk-file")

        @pytest.mark.fresh_vm
        def test_e_opts_out(vm):
            assert vm.name.startswith("fresh")
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


def test_lab_machines_can_roll_back_to_what_their_fixture_set_up(pytester, base):
    pytester.makepyfile("""
        import pytest

        @pytest.fixture(scope="module")
        def server(lab):
            vm = lab.vm("server", rollback=True)
            vm.succeed("echo configured > /data/config")
            return vm

        def test_one_changes_the_config(server):
            assert server.succeed("cat /data/config") == "configured\\n"
            server.succeed("echo changed > /data/config")

        def test_two_sees_the_fixture_state(server):
            assert server.succeed("cat /data/config") == "configured\\n"

        def test_three_plain_machine_is_not_rolled_back(lab):
            vm = lab.vm("plain")
            vm.succeed("touch /tmp/left")

        def test_four(lab):
            lab["plain"].succeed("test -e /tmp/left")
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_failure_snapshot_is_kept_and_restorable_from_the_cli(pytester, base, tmp_path):
    pytester.makepyfile("""
        def test_passes(vm):
            vm.succeed("true")

        def test_breaks(vm):
            vm.succeed("echo evidence > /tmp/post-mortem")
            assert vm.succeed("cat /tmp/post-mortem") == "something else\\n"
    """)
    timelines = tmp_path / "timelines"
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider",
                                           "--lab-snapshot-on-failure",
                                           "--lab-timeline-dir", str(timelines))
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*vboxlab failure snapshot of vm*",
                                 "*vboxlab snapshots restore * vm failed-*test_breaks*",
                                 "*vboxlab: kept labs*", "*snapshot timelines*"])
    assert qemu_pids(str(base)) == [], "kept for post-mortem, but stopped"
    lab_id = re.search(r"vboxlab snapshots restore (\S+) vm (\S+)", result.stdout.str())
    lab, snapshot = lab_id.group(1), lab_id.group(2)
    where = ["--lab-dir", str(base)]
    try:
        tree = cli("snapshots", "tree", lab, "vm", *where).stdout
        assert tree.splitlines()[0].startswith("clean")
        assert snapshot in tree and "failure" in tree and "(failed)" in tree
        listing = cli("snapshots", "list", lab, "vm", *where).stdout
        assert "clean" in listing and snapshot in listing
        refused = cli("snapshots", "delete", lab, "vm", "clean", *where, check=False)
        assert refused.returncode != 0 and "has children" in refused.stderr
        missing = cli("snapshots", "restore", lab, "vm", "nope", *where, check=False)
        assert missing.returncode != 0 and "snapshots: clean, " in missing.stderr
        cli("snapshots", "restore", lab, "vm", snapshot, *where)
        assert qemu_pids(str(base))
        ssh = cli("ssh", lab, "vm", *where, "cat", "/tmp/post-mortem")
        assert ssh.stdout == "evidence\n"
        cli("snapshots", "restore", lab, "vm", "clean", *where)  # a running kept VM too
        gone = cli("ssh", lab, "vm", *where, "cat /tmp/post-mortem || echo absent").stdout
        assert gone == "absent\n"
        assert "deleted " + snapshot in cli("snapshots", "delete", lab, "vm", snapshot,
                                           *where).stdout
    finally:
        cli("clean", "--lab", lab, *where)
    svg = ET.parse(next(timelines.glob("vboxlab-timeline-*-vm.svg"))).getroot()
    outcomes = {g.get("data-name"): g.get("data-outcome")
                for g in svg.findall("s:g[@class='snapshot']", NS)}
    assert outcomes == {"clean": "", snapshot: "failed"}


def test_every_n_tests_and_every_t_seconds(pytester, base, tmp_path):
    pytester.makepyfile("""
        import time

        def test_one(vm):
            vm.succeed("true")

        def test_two_is_long(vm):
            time.sleep(2.6)

        def test_three(vm):
            assert [n.kind for n in vm.snapshots][:1] == ["clean"]
    """)
    timelines = tmp_path / "timelines"
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider",
                                           "--lab-snapshot-every", "2",
                                           "--lab-snapshot-interval", "1",
                                           "--lab-timeline-dir", str(timelines))
    result.assert_outcomes(passed=3)
    svg = ET.parse(next(timelines.glob("vboxlab-timeline-*-vm.svg"))).getroot()
    kinds = [g.get("data-kind") for g in svg.findall("s:g[@class='snapshot']", NS)]
    assert kinds.count("clean") == 1
    assert kinds.count("every-n") == 1
    assert kinds.count("interval") >= 2
    names = [g.get("data-name") for g in svg.findall("s:g[@class='snapshot']", NS)]
    assert any(n.startswith("after-2-") for n in names)
    assert list(base.iterdir()) == []
