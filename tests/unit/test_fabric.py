"""The fabric's data path, driven with plain UDP sockets standing in for QEMU NICs."""

import itertools
import math
import struct
import time

import pytest

from vboxlab.net.fabric import Fabric, FabricError
from vboxlab.net.fabric.control import socket_pair

BROADCAST = b"\xff" * 6


def mac(n):
    return bytes([0x52, 0x54, 0, 0, 0, n])


def frame(dst, src, payload=b"x" * 100):
    return dst + src + b"\x88\xb5" + payload


class Nic:
    """The QEMU side of a port."""

    def __init__(self, sock, number):
        self.sock = sock
        self.mac = mac(number)
        sock.settimeout(0.3)

    def send(self, dst, payload=b"x" * 100):
        self.sock.send(frame(dst, self.mac, payload))

    def recv_all(self, quiet=0.2):
        got = []
        self.sock.settimeout(quiet)
        while True:
            try:
                got.append(self.sock.recv(65536))
            except TimeoutError:
                return got


@pytest.fixture
def fabric(tmp_path):
    """A fabric with segment 0 holding ports 0-2 and segment 1 holding port 3, trunked."""
    pairs = [socket_pair() for _ in range(4)]
    fab = Fabric(tmp_path, tied=True)
    fab.start([far.fileno() for _, far in pairs])
    for port, (_, far) in enumerate(pairs):
        fab.add_port(port, far.fileno(), 0 if port < 3 else 1)
    fab.add_trunk(0, 0, 1)
    fab.seed(7)
    nics = [Nic(near, i + 1) for i, (near, _) in enumerate(pairs)]
    yield fab, nics
    fab.close()
    for near, far in pairs:
        near.close()
        far.close()


def test_a_learning_switch_floods_then_forwards(fabric):
    fab, (a, b, c, d) = fabric
    a.send(BROADCAST, b"hello all")
    assert [f[14:] for f in b.recv_all()] == [b"hello all"]
    assert [f[14:] for f in c.recv_all()] == [b"hello all"]
    assert [f[14:] for f in d.recv_all()] == [b"hello all"]  # across the trunk too
    b.send(a.mac, b"to a only")  # a's MAC was learned from the broadcast
    assert [f[14:] for f in a.recv_all()] == [b"to a only"]
    assert c.recv_all() == [] and d.recv_all() == []
    stats = fab.stats()
    assert stats["p0.in"]["rx_packets"] == 1 and stats["p1.in"]["rx_packets"] == 1
    assert stats["t0.ab"]["tx_packets"] == 1


def test_delay_is_applied_per_direction(fabric):
    fab, (a, b, _, _) = fabric
    a.send(BROADCAST)
    b.recv_all()
    fab.set("p0.in", delay_ns=50_000_000)
    samples = []
    b.sock.settimeout(2)
    for _ in range(20):
        started = time.perf_counter()
        a.send(BROADCAST)
        b.sock.recv(65536)
        samples.append(time.perf_counter() - started)
    assert min(samples) >= 0.050  # never early; how close it comes is benchmarks/' job
    assert sorted(samples)[len(samples) // 2] < 0.080
    started = time.perf_counter()
    b.send(BROADCAST)
    a.sock.settimeout(2)
    a.sock.recv(65536)
    assert time.perf_counter() - started < 0.045  # the other direction is not delayed


def test_random_loss_stays_inside_its_binomial_interval(fabric):
    fab, (a, b, _, _) = fabric
    fab.set("p0.in", loss=0.3)
    sent = 3000
    for i in range(sent):
        a.send(BROADCAST, struct.pack("!I", i))
    received = len(b.recv_all(0.5))
    mean, sd = sent * 0.7, math.sqrt(sent * 0.3 * 0.7)
    assert abs(received - mean) < 2.576 * sd
    assert fab.stats()["p0.in"]["drop_loss"] == sent - received


def test_gilbert_elliott_loss_comes_in_bursts(fabric):
    fab, (a, b, _, _) = fabric
    fab.set("p0.in", ge="0.05,0.3,0,1")  # good->bad 5 %, bad->good 30 %, bad loses all
    for i in range(4000):
        a.send(BROADCAST, struct.pack("!I", i))
    numbers = [struct.unpack("!I", f[14:18])[0] for f in b.recv_all(0.5)]
    gaps = [y - x - 1 for x, y in itertools.pairwise(numbers) if y - x > 1]
    assert gaps and sum(gaps) / len(gaps) > 2  # bursts, not single drops


def test_rate_limit_and_queue(fabric):
    fab, (a, b, _, _) = fabric
    fab.set("p0.in", rate_bps=8_000_000, queue_bytes=2_000_000)
    payload = b"y" * 986  # 1000-byte frames
    started = time.perf_counter()
    for _ in range(500):  # 4 Mbit: 0.5 s at 8 Mbit/s
        a.send(BROADCAST, payload)
    b.sock.settimeout(3)
    for _ in range(500):
        b.sock.recv(65536)
    took = time.perf_counter() - started
    assert 0.45 <= took <= 1.5, took  # never faster than the rate; precision is benchmarked
    fab.set("p0.in", rate_bps=1_000_000, queue_bytes=10_000)
    for _ in range(100):
        a.send(BROADCAST, payload)
    b.recv_all(0.5)
    assert fab.stats()["p0.in"]["drop_queue"] > 50


def test_link_down_partitions_and_up_heals(fabric):
    fab, (a, b, _, d) = fabric
    fab.set("t0.ab", up=0)
    fab.set("t0.ba", up=0)
    a.send(BROADCAST)
    assert len(b.recv_all()) == 1 and d.recv_all() == []
    assert fab.stats()["t0.ab"]["drop_down"] == 1
    fab.set("t0.ab", up=1)
    fab.set("t0.ba", up=1)
    a.send(BROADCAST)
    assert len(d.recv_all()) == 1


def test_duplicate_corrupt_and_mtu(fabric):
    fab, (a, b, _, _) = fabric
    fab.set("p0.in", dup=1.0)
    a.send(BROADCAST, b"twice")
    assert len(b.recv_all()) == 2
    fab.set("p0.in", dup=0, corrupt=1.0)
    a.send(BROADCAST, b"\x00" * 64)
    [bent] = b.recv_all()
    assert bent[:14] == BROADCAST + a.mac + b"\x88\xb5" and bent[14:] != b"\x00" * 64
    fab.set("p0.in", corrupt=0, mtu=100)
    a.send(BROADCAST, b"z" * 101)
    assert b.recv_all() == []
    stats = fab.stats()["p0.in"]
    assert (stats["duplicated"], stats["corrupted"], stats["drop_mtu"]) == (1, 1, 1)


def test_capture_writes_a_pcap(fabric, tmp_path):
    fab, (a, b, _, _) = fabric
    path = tmp_path / "a.pcap"
    fab.capture("p0.in", path)
    for i in range(5):
        a.send(BROADCAST, struct.pack("!I", i) * 10)
    b.recv_all()
    fab.capture("p0.in", None)
    data = path.read_bytes()
    magic, major, minor, _, _, _snaplen, linktype = struct.unpack("<IHHiIII", data[:24])
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    records, offset = 0, 24
    while offset < len(data):
        _, _, incl, orig = struct.unpack("<IIII", data[offset:offset + 16])
        assert incl == orig == 14 + 40
        offset += 16 + incl
        records += 1
    assert records == 5


def test_bad_commands_and_a_dead_fabric_fail_clearly(fabric):
    fab, _ = fabric
    with pytest.raises(FabricError, match=r"no link direction p9\.in"):
        fab.set("p9.in", delay_ns=1)
    with pytest.raises(FabricError, match="unknown setting colour"):
        fab.set("p0.in", colour=1)
    fab._proc.kill()
    fab._proc.wait()
    with pytest.raises(FabricError, match="not running"):
        fab.stats()
