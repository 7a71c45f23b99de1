"""The libvirt provider on a remote host (a second host simulated by an sshd on 127.0.0.1):
what the conformance suite does not cover: the console streamed home, template files sent
once per host, forwarded ports served on this machine, and a host that is not the pinned one
refused, a lab across hosts, placement by memory, and a fabric run on the host over SSH."""

import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.providers.conftest import provider_or_skip
from tests.sshd import LocalSshd
from vboxlab.errors import HostError
from vboxlab.lab import Lab
from vboxlab.providers.remote_host import REMOTE_ROOT


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    with LocalSshd(tmp_path_factory.mktemp("host2")) as sshd:
        yield sshd


@pytest.fixture(scope="module")
def rlab(host, tmp_path_factory):
    with Lab(base=tmp_path_factory.mktemp("remote") / "labs", provider="libvirt", accel="tcg",
             libvirt_uri=host.libvirt_uri) as lab:
        provider_or_skip(lab, "libvirt")
        yield lab


def test_the_console_is_streamed_home_and_files_go_once(rlab, host):
    blobs = host.home / REMOTE_ROOT / "blobs"
    first = rlab.vm("r1")
    assert "Linux version" in first.console_log.read_text()  # the guest's serial console
    sent = {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()}
    assert len(sent) == 3  # the template's disk, kernel and initrd, named by their SHA-256
    second = rlab.vm("r2")
    assert second.succeed("hostname") == "r2\n"
    assert {p.name: p.stat().st_mtime_ns for p in blobs.iterdir()} == sent  # not sent again
    machine_dir = host.home / REMOTE_ROOT / "labs" / rlab.id / "r2"
    assert (machine_dir / "disk.qcow2").is_file() and (machine_dir / "vm-files.cpio").is_file()
    assert not (machine_dir / "initrd.img").exists()  # the shared blob serves every machine
    rlab.remove_vm("r2")
    assert not machine_dir.exists()


def test_a_forwarded_port_is_served_on_this_machine(rlab):
    machine = rlab.machines["r1"]
    machine.succeed("mkdir -p /tmp/www && echo remote-page > /tmp/www/index.html && "
                    "(httpd -p 8080 -h /tmp/www &)")
    machine.wait_for_port(8080, timeout=30)
    port = machine.forward_port(8080)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as answer:
        assert answer.read() == b"remote-page\n"


def test_a_host_whose_key_is_not_the_pinned_one_is_refused(host, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "key")],
                   check=True)
    wrong = tmp_path / "known_hosts"
    public = (tmp_path / "key.pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{host.port} {' '.join(public)}\n")
    query = urllib.parse.urlencode({"keyfile": str(host.user_key), "known_hosts": str(wrong)})
    uri = f"qemu+ssh://root@127.0.0.1:{host.port}/system?{query}"
    with Lab(base=tmp_path / "labs", provider="libvirt", libvirt_uri=uri) as lab, \
            pytest.raises(HostError, match="is not the one pinned in"):
        lab.provider_for("libvirt").preflight([])


def test_a_lab_across_two_hosts_has_a_fabric_on_each_and_follows_its_links_delay(rlab, host,
                                                                                tmp_path):
    """A node here (qemu) and two on the second host (libvirt): each host's NICs are ports of
    its own fabric, the segment shared across hosts is joined by a tunnel, impairments apply
    on the sending side, and the two nodes of the second host talk without this machine."""
    from vboxlab.net.topology import Topology

    topology = Topology.from_dict({
        "name": "two-hosts", "hosts": {"here": "local", "h2": host.libvirt_uri},
        "nodes": {"near": {"host": "here"}, "far": {"host": "h2"}, "far2": {"host": "h2"}},
        "links": [{"between": ["near", "far"], "a_to_b": {"delay": "30ms"},
                   "b_to_a": {"delay": "10ms"}},
                  {"between": ["far", "far2"]}]})
    assert topology.nodes["far"].provider == "libvirt"
    assert topology.nodes["near"].provider == "qemu"
    with rlab.network(topology) as net:
        assert net.node("far").handle.remote.target.port == host.port
        (on_host,) = net.fabric.remotes
        out = net.node("near").succeed("ping -c 3 -i 0.3 -W 5 far")
        rtts = [float(part.split("=")[1]) for part in out.split() if part.startswith("time=")]
        assert len(rtts) == 3 and min(rtts) >= 40.0, out  # 30 ms there, 10 ms back
        link = net.link("near", "far")
        counters = link.counters()
        assert counters["a_to_b"]["tx_packets"] > 0 and counters["b_to_a"]["tx_packets"] > 0
        assert link.b_to_a_dir in on_host.stats()  # far's direction lives on its host's fabric
        with net.capture("near", "far", tmp_path) as pcaps:  # far's half is written there
            net.node("near").succeed("ping -c 2 -W 5 far")
        from scapy.utils import RawPcapReader

        for direction in ("a_to_b", "b_to_a"):
            with RawPcapReader(str(pcaps[direction])) as reader:
                assert sum(1 for _ in reader) >= 2, direction
        assert net.node("far").succeed("ping -c 2 -W 5 far2").count("time=") == 2
        far_link = net.link("far", "far2")  # a segment only the second host has: no tunnel
        assert far_link.counters()["b_to_a"]["tx_packets"] >= 2
        assert far_link.a_to_b_dir not in net.fabric.local.stats()
        assert far_link.b_to_a_dir not in net.fabric.local.stats()


def test_a_topology_placing_nodes_badly_is_refused_with_the_field(host):
    from vboxlab.net.topology import Topology, TopologyError

    with pytest.raises(TopologyError, match=r"nodes\.b\.host: 'h9' is not in hosts: h2"):
        Topology.from_dict({"hosts": {"h2": host.libvirt_uri},
                            "nodes": {"a": {}, "b": {"host": "h9"}}})
    with pytest.raises(TopologyError, match="netns cannot run on remote host h2"):
        Topology.from_dict({"hosts": {"h2": host.libvirt_uri},
                            "nodes": {"a": {}, "b": {"host": "h2", "provider": "netns"}}})
    with pytest.raises(TopologyError, match=r"hosts\.h2: .* is neither 'local' nor"):
        Topology.from_dict({"hosts": {"h2": "qemu:///system"}, "nodes": {"a": {"host": "h2"}}})


def test_lab_hosts_spread_unplaced_nodes_by_memory(host, tmp_path):
    from vboxlab.net.topology import Topology

    topology = Topology.from_dict({"nodes": {"n1": {"memory": 256}, "n2": {"memory": 256},
                                             "ns": {"provider": "netns"}}})
    with Lab(base=tmp_path / "labs", accel="tcg",
             hosts={"here": "local", "h2": host.libvirt_uri}) as lab:
        provider_or_skip(lab, "libvirt")
        placed = lab.place(topology)
        hosts = {name: node.host for name, node in placed.nodes.items()}
        assert sorted([hosts["n1"], hosts["n2"]]) == ["h2", "here"]  # one each: equal memory
        assert hosts["ns"] is None  # namespace hosts stay here
        remote = next(n for n in ("n1", "n2") if hosts[n] == "h2")
        assert placed.nodes[remote].provider == "libvirt"
        assert "placed nodes of" in (lab.dir / "lab.log").read_text()


def gone(pid, timeout=5.0):
    """Whether process ``pid`` (on this machine, the simulated host) ends within timeout."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_a_fabric_runs_on_the_host_over_ssh_and_ends_with_its_session(host, tmp_path):
    """The building block of one fabric per host: started over SSH, ports it makes itself,
    frames switched between them, gone (process and folder) when closed."""
    import socket

    from vboxlab.net.fabric.remote import RemoteFabric
    from vboxlab.providers.remote_host import RemoteHost, RemoteTarget

    remote = RemoteHost(RemoteTarget.parse(host.libvirt_uri))
    fabric = RemoteFabric(remote, "lab1")
    try:
        fabric.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            a.bind(("127.0.0.1", 0))
            b.bind(("127.0.0.1", 0))
            b.settimeout(3)
            port_a = fabric.add_uport(0, 0, "127.0.0.1", "127.0.0.1", a.getsockname()[1])
            fabric.add_uport(1, 0, "127.0.0.1", "127.0.0.1", b.getsockname()[1])
            broadcast = b"\xff" * 6 + bytes([0x52, 0x54, 0, 0, 0, 1]) + b"\x88\xb5" + b"x" * 60
            a.sendto(broadcast, ("127.0.0.1", port_a))
            assert b.recv(2048) == broadcast
        assert fabric.stats()["p0.in"]["rx_packets"] == 1
        folder = host.home / REMOTE_ROOT / "labs" / "lab1" / "vboxlab-fabric"
        assert folder.is_dir()
        assert Path(f"/proc/{fabric.pid}/cwd").resolve() == folder  # the host is this machine
    finally:
        fabric.close()
        remote.close()
    assert not folder.exists()
    assert gone(fabric.pid)


def test_a_remote_fabric_ends_when_the_ssh_connection_is_lost(host):
    from vboxlab.net.fabric.remote import RemoteFabric
    from vboxlab.providers.remote_host import RemoteHost, RemoteTarget

    remote = RemoteHost(RemoteTarget.parse(host.libvirt_uri))
    fabric = RemoteFabric(remote, "lab2")
    fabric.start()
    assert Path(f"/proc/{fabric.pid}").exists()
    remote.close()  # as when the run is killed: no quit, the session just ends
    assert gone(fabric.pid)
    cleaner = RemoteHost(RemoteTarget.parse(host.libvirt_uri))
    cleaner.remove_machine_dir(fabric.folder)
    cleaner.close()
