"""``vboxlab up/status/down`` and the commands that act on an up lab, end to end.

Real supervisors, real tiny VMs, the real CLI in subprocesses (as a user types
it). One two-node lab is shared by the module's tests; the tests that kill or
interrupt a supervisor boot a one-node lab of their own. Every lab is started
with ``--until-pid`` of this test run, so even a killed run leaves nothing.
"""

import json
import os
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from vboxlab.control.protocol import ControlClient
from vboxlab.net.pcaps import frames as read_frames

from .helpers import CLI, cli, qemu_pids, wait_for

PAIR = """\
name: pair
nodes:
  h1: {}
  h2: {}
links:
  - between: [h1, h2]
    delay: 2ms
"""
ONE = "name: one\nnodes:\n  solo: {}\n"


def up(base, topology, *args):
    return cli("up", str(topology), "--lab-dir", str(base), "--accel", "tcg",
               "--until-pid", str(os.getpid()), *args)


def lab_cli(base, *args, check=True):
    return cli(*args, "--lab-dir", str(base), check=check)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The two-node lab ``pair``, up for the whole module; yields its state folder."""
    folder = tmp_path_factory.mktemp("up")
    base = folder / "labs"
    topology = folder / "pair.yaml"
    topology.write_text(PAIR)
    started = up(base, topology, "--seed", "7")
    assert "lab pair is up" in started.stdout and "(seed 7)" in started.stdout
    assert "h1 configured at" in started.stderr and "h2 configured at" in started.stderr
    try:
        yield base
    finally:
        lab_cli(base, "down", "pair")
        assert qemu_pids(str(base)) == []
        assert list(base.iterdir()) == []


def test_status_lists_the_lab_machines_and_links(pair):
    listed = lab_cli(pair, "status").stdout
    assert "pair\tup\tpair\th1 (running), h2 (running)" in listed
    found = json.loads(lab_cli(pair, "status", "pair", "--json").stdout)[0]
    assert found["status"] == "up" and found["seed"] == 7 and found["topology"] == "pair"
    machines = {m["name"]: m for m in found["machines"]}
    assert set(machines) == {"h1", "h2"}
    assert machines["h1"]["state"] == "running" and machines["h1"]["template"] == "tiny"
    assert machines["h1"]["memory"] > 0 and machines["h1"]["ssh"]["host"] == "127.0.0.1"
    [link] = found["links"]
    assert (link["a"], link["b"]) == ("h1", "h2")
    assert link["a_to_b"]["text"] == "delay 2ms"
    socket_path = pair / "pair" / "control.sock"
    assert stat.S_IMODE(socket_path.stat().st_mode) == 0o600
    text = lab_cli(pair, "status", "pair").stdout
    assert "vboxlab ssh pair h1" in text and "h1 -> h2\tup\tdelay 2ms" in text


def test_exec_keeps_output_apart_and_returns_the_status(pair):
    result = lab_cli(pair, "exec", "pair", "h1", "echo out; echo err >&2; exit 3", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert lab_cli(pair, "exec", "pair", "h2", "hostname").stdout == "h2\n"
    missing = lab_cli(pair, "exec", "pair", "h7", "true", check=False)
    assert missing.returncode == 2
    assert "lab pair has no machine 'h7'; machines: h1, h2" in missing.stderr


def test_links_change_and_count_while_the_lab_runs(pair):
    client = ControlClient(pair / "pair" / "control.sock")
    before = client.call("link.list")[0]["a_to_b"]["counters"]["tx_packets"]
    lab_cli(pair, "exec", "pair", "h1", "ping -c 3 -W 2 h2")
    after = client.call("link.list")[0]["a_to_b"]["counters"]["tx_packets"]
    assert after >= before + 3
    changed = lab_cli(pair, "link", "set", "pair", "h1", "h2", "delay=150ms").stdout
    assert "h1 -> h2: delay 150ms" in changed
    rtt = lab_cli(pair, "exec", "pair", "h1", "ping -c 2 -W 3 h2").stdout
    assert "min/avg/max" in rtt
    assert float(rtt.split("min/avg/max = ")[1].split("/")[0]) >= 300
    lab_cli(pair, "link", "down", "pair", "h1", "h2")
    assert lab_cli(pair, "exec", "pair", "h1", "ping -c 1 -W 1 h2", check=False).returncode == 1
    lab_cli(pair, "link", "up", "pair", "h1", "h2")
    lab_cli(pair, "link", "set", "pair", "h1", "h2", "delay=2ms")
    lab_cli(pair, "exec", "pair", "h1", "ping -c 1 -W 2 h2")
    bad = lab_cli(pair, "link", "set", "pair", "h1", "h2", "delay=-1ms", "color=red",
                  check=False)
    assert bad.returncode == 2
    assert "link h1<->h2: delay: '-1ms' is negative" in bad.stderr
    assert "color: not a link property (use delay, jitter" in bad.stderr
    assert "h1 -> h2\tup\tdelay 2ms" in lab_cli(pair, "link", "list", "pair").stdout


def test_a_capture_started_and_stopped_from_the_cli_holds_the_traffic(pair):
    files = lab_cli(pair, "capture", "start", "pair", "h1", "h2").stdout.split()
    assert [os.path.basename(f) for f in files] == ["h1-to-h2.pcap", "h2-to-h1.pcap"]
    again = lab_cli(pair, "capture", "start", "pair", "h1", "h2", check=False)
    assert "already being captured" in again.stderr
    lab_cli(pair, "exec", "pair", "h1", "ping -c 2 -W 2 h2")
    stopped = lab_cli(pair, "capture", "stop", "pair", "h1", "h2").stdout
    assert "h1-to-h2.pcap (" in stopped
    captured = list(read_frames(Path(files[0])))
    assert sum(1 for _, frame in captured if frame[12:14] == b"\x08\x00" and frame[23] == 1) >= 2


def test_snapshots_and_power_through_the_control_socket(pair):
    lab_cli(pair, "snapshots", "take", "pair", "h2", "clean")
    lab_cli(pair, "exec", "pair", "h2", "touch /root/mark")
    lab_cli(pair, "snapshots", "restore", "pair", "h2", "clean")
    assert lab_cli(pair, "exec", "pair", "h2", "test -e /root/mark", check=False).returncode == 1
    assert "clean *" in lab_cli(pair, "snapshots", "tree", "pair", "h2").stdout
    assert "h2: stopped" in lab_cli(pair, "machine", "stop", "pair", "h2").stdout
    found = json.loads(lab_cli(pair, "status", "pair", "--json").stdout)[0]
    assert {m["name"]: m["state"] for m in found["machines"]} == {"h1": "running",
                                                                  "h2": "stopped"}
    assert "h2: running" in lab_cli(pair, "machine", "start", "pair", "h2").stdout
    lab_cli(pair, "exec", "pair", "h1", "ping -c 1 -W 3 h2")  # its lab NIC works again
    assert "solo" not in lab_cli(pair, "machine", "console", "pair", "h2").stdout
    lab_cli(pair, "snapshots", "delete", "pair", "h2", "clean")
    log = (pair / "pair" / "lab.log").read_text()
    assert "control: snapshot.restore {'machine': 'h2', 'name': 'clean'}" in log


def test_up_refuses_bad_input_and_leaves_nothing(tmp_path, base):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nnodes:\n  h1: {template: tiny, memory: lots}\n")
    result = cli("up", str(bad), "--lab-dir", str(base), check=False)
    assert result.returncode == 2 and "bad.yaml" in result.stderr and "memory" in result.stderr
    named = tmp_path / "named.yaml"
    named.write_text("name: Not_A_Name\nnodes:\n  h1: {}\n")
    result = cli("up", str(named), "--lab-dir", str(base), check=False)
    assert "is not a valid lab name; give one with --name" in result.stderr
    result = cli("down", "ghost", "--lab-dir", str(base), check=False)
    assert result.returncode == 2 and "no lab 'ghost'" in result.stderr


def test_a_killed_supervisor_takes_its_vms_along_and_down_cleans_up(tmp_path, base):
    topology = tmp_path / "one.yaml"
    topology.write_text(ONE)
    up(base, topology, "--name", "k1")
    clash = cli("up", str(topology), "--lab-dir", str(base), "--name", "k1", check=False)
    assert "a lab called 'k1' already exists" in clash.stderr
    supervisor = json.loads((base / "k1" / "up.json").read_text())["supervisor"]
    assert qemu_pids(str(base))
    os.kill(supervisor, signal.SIGKILL)
    wait_for(lambda: not qemu_pids(str(base)), 30, "QEMU to die with its supervisor")
    assert "k1\tdead" in cli("status", "--lab-dir", str(base)).stdout
    assert "lab k1 (dead) is down and removed" in cli("down", "k1", "--lab-dir",
                                                      str(base)).stdout


def test_an_interrupted_up_and_an_ended_owner_leave_nothing(tmp_path, base):
    topology = tmp_path / "one.yaml"
    topology.write_text(ONE)
    starting = subprocess.Popen([*CLI, "up", str(topology), "--lab-dir", str(base), "--name",
                                 "i1", "--accel", "tcg"], stderr=subprocess.PIPE, text=True)
    assert "starting 1 machines" in starting.stderr.readline()
    starting.send_signal(signal.SIGINT)
    assert starting.wait(timeout=120) != 0
    starting.stderr.close()
    wait_for(lambda: not (base / "i1").exists(), 60, "the interrupted lab to be removed")
    owner = subprocess.Popen(["sleep", "600"])
    try:
        cli("up", str(topology), "--lab-dir", str(base), "--name", "o1", "--accel", "tcg",
            "--until-pid", str(owner.pid))
        assert "o1\tup" in cli("status", "--lab-dir", str(base)).stdout
    finally:
        owner.kill()
        owner.wait()
    wait_for(lambda: not (base / "o1").exists(), 60, "the lab to go down with its owner")
    gone = cli("up", str(topology), "--lab-dir", str(base), "--until-pid", "999999999",
               check=False)
    assert "--until-pid 999999999: no such process" in gone.stderr


def test_namespace_hosts_in_an_up_lab_start_every_time(tmp_path, base):
    """pyroute2 forks (without exec) for every namespace it enters and ends the child with
    SIGTERM: the supervisor's signal handler must not run the lab's teardown in that child."""
    nodes = ", ".join(f"n{i}: {{provider: netns}}" for i in range(6))
    links = "".join(f"  - {{between: [n{i}, lan]}}\n" for i in range(6))
    topology = tmp_path / "ns.yaml"
    topology.write_text(f"name: ns\nnodes: {{{nodes}}}\nsegments: {{lan: {{subnet: "
                        f"10.78.0.0/24}}}}\nlinks:\n{links}")
    try:
        for attempt in range(3):
            up(base, topology, "--name", f"ns{attempt}")
            pinged = cli("exec", f"ns{attempt}", "n0", "ping -c 1 -W 2 n5", "--lab-dir",
                         str(base))
            assert "1 received" in pinged.stdout
    finally:
        for attempt in range(3):
            if (base / f"ns{attempt}").exists():
                cli("down", f"ns{attempt}", "--lab-dir", str(base))
