"""What every provider must do (see conftest.py). Tests run in file order on one machine per
provider; the ones that end it (kill) come last."""

import signal
import subprocess
import sys
import time

import pytest

from vboxlab.errors import (
    ChannelError,
    CommandTimeout,
    GuestCommandError,
    MachineDied,
    NotSupported,
    VboxlabError,
)
from vboxlab.leftovers import find_leftovers
from vboxlab.providers import Capability, MachineState, supports
from vboxlab.providers.remote_host import REMOTE_ROOT, RemoteTarget


def test_boots_to_a_first_command(machine, provider):
    assert machine.state is MachineState.RUNNING
    assert machine.succeed("echo first") == "first\n"
    assert machine.succeed("hostname").strip() == "conf"
    assert machine.provider == provider


def test_the_machine_verbs(machine, tmp_path):
    result = machine.execute("echo out; echo err >&2; exit 4")
    assert (result.rc, result.stdout, result.stderr) == (4, "out\n", "err\n")
    with pytest.raises(GuestCommandError, match="exited with status 4"):
        machine.succeed("exit 4")
    assert machine.fail("false") == ""
    with pytest.raises(CommandTimeout):
        machine.execute("sleep 30", timeout=1)
    machine.succeed("rm -f /tmp/flag; (sleep 1; touch /tmp/flag) >/dev/null 2>&1 &")
    machine.wait_until_succeeds("test -e /tmp/flag", timeout=30)
    source = tmp_path / "in.txt"
    source.write_bytes(bytes(range(256)) * 40)
    machine.copy_to(source, "/tmp/in.txt")
    machine.copy_from("/tmp/in.txt", tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_bytes() == source.read_bytes()


def test_ports_are_forwarded_where_declared(machine):
    if not supports(machine.handle, Capability.PORT_FORWARD):
        with pytest.raises(NotSupported, match="cannot do port forwarding"):
            machine.forward_port(22)
        return
    machine.wait_for_port(22, timeout=60)
    port = machine.forward_port(22)
    assert 1024 <= port < 65536
    assert machine.forward_port(22) == port  # asked twice: the same forward


def test_snapshots_where_declared(machine):
    if not supports(machine.handle, Capability.SNAPSHOTS):
        with pytest.raises(NotSupported, match="cannot do snapshots"):
            machine.snapshot("s1")
        return
    machine.succeed("echo before > /root/mark")
    node = machine.snapshot("conf-s1")
    assert node.size > 0 and "conf-s1" in machine.snapshots
    machine.succeed("echo after > /root/mark; touch /root/later")
    machine.restore("conf-s1")
    assert machine.succeed("cat /root/mark") == "before\n"
    assert machine.execute("test -e /root/later").rc == 1
    assert machine.delete_snapshot("conf-s1") == ["conf-s1"]
    assert "conf-s1" not in machine.snapshots


def test_stop_and_start_where_declared(machine):
    if not supports(machine.handle, Capability.RESTART):
        machine.stop(timeout=5)
        assert machine.state is MachineState.STOPPED
        with pytest.raises(NotSupported, match="cannot start again"):
            machine.start()
        return
    machine.succeed("echo kept > /data/persisted; sync")  # tiny: the root is RAM, /data a disk
    machine.stop(timeout=30)
    assert machine.state is MachineState.STOPPED
    machine.start()
    assert machine.state is MachineState.RUNNING
    assert machine.succeed("cat /data/persisted") == "kept\n"  # the disk outlives a stop


def test_lab_nics_through_the_fabric_where_declared(plab, provider, machine):
    topology = {"name": "pair", "defaults": {"provider": provider},
                "nodes": {"pa": {}, "pb": {}}, "links": [{"between": ["pa", "pb"]}]}
    from vboxlab.net.topology import Topology

    pair = Topology.from_dict(topology)
    if not supports(machine.handle, Capability.LAB_NICS):
        with pytest.raises(NotSupported, match="lab NICs are not supported"):
            plab.network(pair)
        return
    with plab.network(pair) as net:
        net.node("pa").succeed("ping -c 2 -W 3 pb")


def test_a_killed_machine_says_so(plab, machine):
    """The last test of the shared machine: it ends it (a provider that cannot start again
    after the stop test gets a fresh one)."""
    if machine.state is not MachineState.RUNNING:
        machine = plab.vm("victim")
    machine.succeed("true")
    machine.kill()
    assert machine.state in (MachineState.STOPPED, MachineState.CRASHED)
    with pytest.raises((MachineDied, ChannelError, NotSupported)) as caught:
        machine.succeed("true")
    assert machine.name in str(caught.value)


SIGKILLED = """
import os, signal, sys
from pathlib import Path
from vboxlab.lab import Lab
lab = Lab(base=Path(sys.argv[1]), provider=sys.argv[2], accel="tcg",
          libvirt_uri=sys.argv[3] or None)
lab.vm("doomed").succeed("true")
print("up", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_nothing_is_left_after_sigkill(provider, libvirt_uri, second_host, tmp_path):
    base = tmp_path / "labs"
    run = subprocess.run([sys.executable, "-c", SIGKILLED, str(base), provider,
                          libvirt_uri or ""],
                         capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    deadline = time.monotonic() + 15
    while True:
        left = {kind: items for kind, items in find_leftovers(base).items()
                if items and kind != "lab folders"}
        if provider == "libvirt":
            uri = RemoteTarget.parse(libvirt_uri).libvirt_uri() if libvirt_uri else \
                "qemu:///system"
            listed = subprocess.run(["virsh", "-c", uri, "list", "--name"],
                                    capture_output=True, text=True, check=True).stdout
            domains = [d for d in listed.split() if d.startswith("vboxlab-") and
                       any(d.startswith(f"vboxlab-{p.name}") for p in base.iterdir())]
            if domains:
                left["libvirt domains"] = domains
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == {}
    killed = [p.name for p in base.iterdir()]
    cleaned = subprocess.run([sys.executable, "-m", "vboxlab.cli", "clean", "--lab-dir",
                              str(base)], capture_output=True, text=True, check=False)
    assert cleaned.returncode == 0, cleaned.stderr
    assert list(base.iterdir()) == []
    if second_host is not None:  # the machine's folder on the host went too
        on_host = second_host.home / REMOTE_ROOT / "labs"
        assert killed and not any((on_host / name).exists() for name in killed)


def test_errors_are_vboxlab_errors(plab, provider):
    with pytest.raises(VboxlabError):
        plab.vm("Bad_Name")
