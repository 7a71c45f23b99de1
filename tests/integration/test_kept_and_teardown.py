"""Kept labs driven through the provider from the CLI, and teardowns that never skip a step."""

import re
from pathlib import Path

from .helpers import cli, qemu_pids

WIRED = """
    def test_wired_and_broken(lab):
        wire = lab.wire("wired", "nobody")
        vm = lab.vm("wired", nics=[wire.nic("wired")], rollback=True)
        vm.succeed("echo evidence > /tmp/post-mortem")
        assert vm.succeed("cat /sys/class/net/eth1/carrier") == "1\\n"
        assert False, "broken on purpose"
"""


def failure_snapshot(pytester, base, source):
    """Run ``source`` (one failing test) keeping a failure snapshot: its lab and snapshot."""
    pytester.makepyfile(source)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider",
                                           "--lab-snapshot-on-failure")
    result.assert_outcomes(failed=1)
    found = re.search(r"vboxlab snapshots restore (\S+) wired (\S+)", result.stdout.str())
    return found.group(1), found.group(2)


def test_a_kept_vm_with_lab_nics_is_restored_unplugged_or_not_at_all(pytester, base):
    lab, snapshot = failure_snapshot(pytester, base, WIRED)
    where = ["--lab-dir", str(base)]
    try:
        refused = cli("snapshots", "restore", lab, "wired", snapshot, *where, check=False)
        assert refused.returncode == 2
        assert "wired to its lab's network (eth1)" in refused.stderr
        assert "--unplugged" in refused.stderr
        assert qemu_pids(str(base)) == []  # nothing was started
        cli("snapshots", "restore", lab, "wired", snapshot, "--unplugged", *where)
        shell = cli("ssh", lab, "wired", *where,
                    "cat /tmp/post-mortem /sys/class/net/eth1/carrier").stdout
        assert shell == "evidence\n0\n"  # the state is back; the lab NIC is unplugged
    finally:
        cli("clean", "--lab", lab, *where)
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


WIRED_VHOST = """
    from vboxlab.net import Topology


    def test_wired_and_broken(lab):
        lab.network(Topology.from_dict({"datapath": "vhost-user",
                                        "nodes": {"wired": None, "peer": None},
                                        "links": [{"between": ["wired", "peer"]}]}))
        vm = lab.node("wired")
        vm.succeed("ping -c 1 -W 2 peer && echo evidence > /tmp/post-mortem")
        assert False, "broken on purpose"
"""


def fabric_pids(marker):
    """Fabric processes whose command line mentions ``marker`` (a lab folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and "vboxlab-fabric" in argv and marker in argv:
            found.append(int(entry.name))
    return found


def test_a_kept_vhost_user_vm_is_restored_unplugged(pytester, base):
    """QEMU restores a vhost-user NIC only onto a vhost-user back end: a fabric of the VM's
    own that carries nothing stands in for the lab's, and `vboxlab clean` ends it."""
    lab, snapshot = failure_snapshot(pytester, base, WIRED_VHOST)
    where = ["--lab-dir", str(base)]
    try:
        cli("snapshots", "restore", lab, "wired", snapshot, "--unplugged", *where)
        shell = cli("ssh", lab, "wired", *where,
                    "cat /tmp/post-mortem /sys/class/net/eth1/carrier").stdout
        assert shell == "evidence\n0\n"  # the state is back; the lab NIC is unplugged
        assert len(fabric_pids(str(base))) == 1  # the stand-in
    finally:
        cli("clean", "--lab", lab, *where)
    assert fabric_pids(str(base)) == []
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


TEARDOWN = """
    from pathlib import Path

    from vboxlab.snapshots import safe_name


    def test_one(vm, request):
        vm.succeed("touch /tmp/dirty")
        # the every-N snapshot after this test will clash with this name and fail
        vm.snapshot(f"after-1-{safe_name(request.node.nodeid, 36)}")


    def test_two(vm):
        vm.fail("test -e /tmp/dirty")  # rolled back all the same
"""


def test_failing_schedules_and_reports_never_skip_rollback_or_closing(pytester, base, tmp_path):
    pytester.makepyfile(TEARDOWN)
    not_a_folder = tmp_path / "timelines"
    not_a_folder.write_text("a file where the timelines would go")
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider",
                                           "--lab-snapshot-every", "1",
                                           "--lab-timeline-dir", str(not_a_folder))
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_one*",
                                 "*every-N snapshot failed*already has a snapshot*",
                                 "*could not write snapshot timelines*"])
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []  # the lab was closed although its timelines failed
