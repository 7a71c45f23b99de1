"""Network-namespace hosts: topologies of them alone and mixed with VMs, their verbs and leaks."""

import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vboxlab.errors import (
    CommandTimeout,
    ConfigError,
    GuestCommandError,
    HostError,
    NotSupported,
    ProviderError,
)
from vboxlab.lab import Lab
from vboxlab.labdirs import clean
from vboxlab.net import Topology

from .helpers import wait_for

pytestmark = pytest.mark.root

LINE = {
    "name": "ns-line",
    "defaults": {"provider": "netns"},
    "nodes": {"h1": None, "r1": None, "h2": None},
    "links": [{"between": ["h1", "r1"], "delay": "5ms"}, {"between": ["r1", "h2"]}],
}


def rtt_min_ms(output):
    return float(re.search(r"= ([\d.]+)/", output).group(1))


def holders(base):
    """Processes of netns hosts (unshare and its sleep) whose working folder is under ``base``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = str((entry / "cwd").readlink())
            argv = (entry / "cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cwd.startswith(str(base)) and argv in (b"unshare", b"sleep"):
            found.append(int(entry.name))
    return found


def taps():
    return sorted(p.name for p in Path("/sys/class/net").glob("vl*"))


@pytest.fixture
def lab(tmp_path):
    base = tmp_path / "labs"
    with Lab(base=base) as the_lab:
        yield the_lab
    assert holders(base) == []
    assert taps() == []
    assert list(base.iterdir()) == []


def test_a_namespace_line_routes_through_its_middle_host_and_follows_link_changes(lab):
    network = lab.network(Topology.from_dict(LINE), seed=3)
    h1, r1 = lab.node("h1"), lab.node("r1")
    assert "10.250.0.1/30" in h1.succeed("ip -4 addr show eth1")
    assert h1.succeed("hostname") == "h1\n"
    assert "h2" in h1.succeed("cat /etc/hosts")
    assert r1.succeed("cat /proc/sys/net/ipv4/ip_forward") == "1\n"
    assert h1.succeed("cat /proc/sys/net/ipv4/ip_forward") == "0\n"
    out = h1.succeed("ping -c 3 -i 0.2 h2")  # two hops: through r1
    assert "ttl=63" in out
    assert rtt_min_ms(out.splitlines()[-1]) >= 10.0  # 5 ms each way on h1-r1
    network.link("r1", "h2").set(delay="40ms")
    assert rtt_min_ms(h1.succeed("ping -c 3 -i 0.2 h2 | tail -1")) >= 90.0
    link = network.link("h1", "r1").down()
    h1.fail("ping -c 2 -W 1 h2")
    assert link.counters()["a_to_b"]["drop_down"] >= 2
    link.up()
    h1.wait_until_succeeds("ping -c 1 -W 1 h2", timeout=10)
    assert link.counters()["a_to_b"]["tx_packets"] > 0


def test_without_routing_only_neighbours_are_reached(lab):
    lab.network(Topology.from_dict({**LINE, "routing": "none"}))
    h1 = lab.node("h1")
    h1.succeed("ping -c 1 -W 2 r1")
    assert "via" not in h1.succeed("ip route")
    h1.fail("ping -c 1 -W 1 h2")


def test_a_topology_mixes_a_vm_and_namespace_hosts(lab, tmp_path):
    lab.network(Topology.from_dict({
        "segments": {"lan": {"subnet": "10.66.0.0/24"}},
        "nodes": {"vm1": None, "ns1": {"provider": "netns"}},
        "links": [{"between": ["vm1", "lan"], "delay": "2ms"}, {"between": ["ns1", "lan"]}],
    }))
    vm1, ns1 = lab.node("vm1"), lab.node("ns1")
    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_text("from a namespace\n")
    ns1.succeed(f"python3 -m http.server --bind 0.0.0.0 --directory {www} 8080 "
                ">/dev/null 2>&1 &")
    ns1.wait_for_port(8080, timeout=20)
    assert vm1.succeed("wget -q -O - http://ns1:8080/hello.txt") == "from a namespace\n"
    assert rtt_min_ms(ns1.succeed("ping -c 3 -i 0.2 vm1 | tail -1")) >= 4.0


def test_namespace_host_verbs_and_what_it_refuses(lab, tmp_path):
    lab.network(Topology.from_dict({"defaults": {"provider": "netns"},
                                    "nodes": {"a": None, "b": None},
                                    "links": [{"between": ["a", "b"]}]}))
    a = lab.node("a")
    assert a.execute("exit 3").rc == 3
    with pytest.raises(GuestCommandError, match="exited with status 1"):
        a.succeed("false")
    a.fail("false")
    with pytest.raises(CommandTimeout):
        a.succeed("sleep 30", timeout=1)
    assert "sleep 30" not in a.succeed("ps -eo args")  # the timed-out command was killed
    # its own PID namespace: the holder is PID 1 there
    assert a.succeed("ps -eo pid=,args=").split("\n")[0].split() == ["1", "sleep", "infinity"]
    source = tmp_path / "in.txt"
    source.write_text("copied\n")
    a.copy_to(source, str(tmp_path / "inside.txt"))
    a.copy_from(str(tmp_path / "inside.txt"), tmp_path / "out.txt")
    assert (tmp_path / "out.txt").read_text() == "copied\n"
    with pytest.raises(ProviderError, match="cannot do snapshots: its provider lacks it; give "
                                            "the node provider: qemu"):
        a.snapshot("x")
    with pytest.raises(NotSupported, match="cannot do port forwarding: its provider lacks it; "
                                           "reach its services from the other nodes"):
        a.forward_port(80)
    with pytest.raises(NotSupported, match="forward_port is for VMs"):
        a.handle.forward_port(80)  # the handle says so too, for callers that skip the check
    assert repr(a) == f"<Machine a running ({a.handle!r})>"
    assert repr(a.handle) == "<NetnsHost a running (1 interfaces)>"
    a.succeed("sleep 300 >/dev/null 2>&1 &")
    a.stop()
    assert a.state.value == "stopped"
    with pytest.raises(ProviderError, match="cannot start again"):
        a.start()


def test_netns_topologies_need_root_and_say_so_before_anything_starts(tmp_path, monkeypatch):
    base = tmp_path / "labs"
    with Lab(base=base) as the_lab:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        with pytest.raises(HostError, match=r"netns nodes h1, r1, h2 needs root"):
            the_lab.network(Topology.from_dict(LINE))
        assert holders(base) == []
        assert not (the_lab.dir / "fabric.sock").exists()


def test_a_killed_run_leaves_no_namespace_host_behind(tmp_path):
    base = tmp_path / "labs"
    script = tmp_path / "hold.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from vboxlab.lab import Lab
        from vboxlab.net import Topology
        lab = Lab(base={str(base)!r})
        lab.network(Topology.from_dict({LINE!r}))
        lab.node("h1").succeed("sleep 600 >/dev/null 2>&1 &")
        print("ready", flush=True)
        time.sleep(600)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        assert len(holders(base)) == 6  # unshare + sleep for each of three hosts
        assert len(taps()) == 0  # every tap moved into its namespace
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        wait_for(lambda: holders(base) == [], 5, "the namespace holders to die")
        assert "sleep 600" not in subprocess.run(["ps", "-eo", "args"], capture_output=True,
                                                 text=True, check=True).stdout
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    removed = clean(base)
    assert len(removed) == 1
    assert list(base.iterdir()) == []


def test_a_fabric_that_dies_mid_test_fails_the_test_saying_so(pytester, tmp_path):
    base = tmp_path / "labs"
    (pytester.path / "pair.yaml").write_text(
        "defaults: {provider: netns}\nnodes: {a: {}, b: {}}\nlinks:\n  - between: [a, b]\n")
    pytester.makepyfile("""
        import os, signal, time
        import pytest

        @pytest.mark.lab(topology="pair.yaml")
        def test_cut(network, lab):
            lab.node("a").succeed("ping -c 1 -W 2 b")
            os.kill(network.fabric.pid, signal.SIGKILL)
            lab.node("a").succeed("ping -c 1 -W 1 b")

        @pytest.mark.lab(topology="pair.yaml")
        def test_quiet(network, lab):
            os.kill(network.fabric.pid, signal.SIGKILL)
            time.sleep(0.5)  # the kill lands; the test itself notices nothing
    """)
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    assert text.count("the network fabric is not running") >= 2
    assert "::test_cut ran; every link of topology pair was cut" in " ".join(text.split())
    assert holders(base) == []
    assert taps() == []


def test_a_network_is_a_context_manager_and_the_lab_builds_another_after_it(lab, tmp_path):
    with lab.network(Topology.from_dict(LINE)) as net:
        assert set(lab.machines) == {"h1", "r1", "h2"}
        net.node("h1").succeed("ping -c 1 -W 2 h2")
        assert repr(net).startswith("<Network ns-line running: nodes h1, r1, h2; 2 links; seed")
        assert repr(net.link("h1", "r1")) == "<Link h1<->r1: h1->r1 delay 5ms; r1->h1 delay 5ms>"
        bad = tmp_path / "bad.yaml"
        bad.write_text("nodes:\n  Web: null\n")
        with pytest.raises(ConfigError, match=r"bad.yaml:1: nodes: .*name 'Web'"):
            lab.network(bad)  # the file's own error, not "one network per lab"
        with pytest.raises(ConfigError, match="already runs a network"):
            lab.network(Topology.from_dict(LINE))
        unseeded = net.seed
    assert net.closed and lab.machines == {} and lab.current_network is None
    assert holders(lab.dir) == [] and taps() == []
    assert f"network ns-line: seed {unseeded}" in (lab.dir / "lab.log").read_text()
    with lab.network(Topology.from_dict(LINE), seed=5) as again:
        assert again.seed == 5
        again.node("h2").succeed("ping -c 1 -W 2 h1")
    lab.remove_network()  # nothing running: nothing to do


def test_a_failing_network_test_reports_its_seed(pytester, tmp_path):
    topology = tmp_path / "line.yaml"
    topology.write_text(
        "name: ns-line\ndefaults: {provider: netns}\nnodes: {h1: null, h2: null}\n"
        "links:\n  - between: [h1, h2]\n    loss: 30%\n")
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.lab(topology={str(topology)!r})
        def test_lossy(network):
            network.node("h1").succeed("ping -c 5 -i 0.2 -W 1 h2")
            assert False, "look at the seed"
    """)
    base = tmp_path / "labs"
    result = pytester.runpytest_subprocess("--lab-dir", str(base), "-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*vboxlab network seed*",
                                 "*topology ns-line ran with seed * replay the same drops and "
                                 "delays with @pytest.mark.lab(topology=..., seed=*)"])
    assert holders(base) == [] and taps() == []
