"""Two real guests through the fabric: reachability, delay they can measure, a partition."""

import re

import pytest

from vboxlab.lab import Lab
from vboxlab.net.fabric import Fabric
from vboxlab.net.fabric.control import socket_pair
from vboxlab.net.wire import mac_for
from vboxlab.providers.base import NicSpec

from .helpers import qemu_pids


def rtt_min_ms(output):
    return float(re.search(r"= ([\d.]+)/", output).group(1))


@pytest.fixture
def pair(tmp_path):
    base = tmp_path / "labs"
    pairs = [socket_pair() for _ in range(2)]
    with Lab(base=base) as lab:
        fabric = Fabric(lab.dir)
        fabric.start([far.fileno() for _, far in pairs])
        try:
            for port, (_, far) in enumerate(pairs):
                fabric.add_port(port, far.fileno(), 0)
            hosts = "10.250.1.1 left\n10.250.1.2 right\n"
            left = lab.vm("left", hosts=hosts, nics=[
                NicSpec("eth1", mac_for(lab.id, "left"), pairs[0][0].fileno(), "10.250.1.1/24")])
            right = lab.vm("right", hosts=hosts, nics=[
                NicSpec("eth1", mac_for(lab.id, "right"), pairs[1][0].fileno(),
                        "10.250.1.2/24")])
            yield fabric, left, right
        finally:
            fabric.close()
            for near, far in pairs:
                near.close()
                far.close()
    assert qemu_pids(str(base)) == []


def test_guests_talk_through_the_fabric_and_feel_its_delay(pair):
    fabric, left, right = pair
    baseline = rtt_min_ms(left.succeed("ping -c 5 -i 0.2 right | tail -1"))
    fabric.set("p0.in", delay_ns=40_000_000)
    fabric.set("p1.in", delay_ns=40_000_000)
    delayed = rtt_min_ms(left.succeed("ping -c 5 -i 0.2 right | tail -1"))
    assert delayed >= 80.0
    assert delayed < 80.0 + baseline + 40
    right.succeed("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1M count=2 "
                  "2>/dev/null && httpd -p 80 -h /tmp/www")
    right.wait_for_port(80)
    left.succeed("wget -q -O /tmp/f http://right/f")
    assert left.succeed("md5sum < /tmp/f") == right.succeed("md5sum < /tmp/www/f")
    stats = fabric.stats()
    assert stats["p1.in"]["tx_bytes"] > 2_000_000


def test_a_link_taken_down_partitions_the_guests(pair):
    fabric, left, _ = pair
    left.succeed("ping -c 1 -W 2 right")
    fabric.set("p1.out", up=0)
    left.fail("ping -c 2 -W 1 right")
    assert fabric.stats()["p1.out"]["drop_down"] > 0
    fabric.set("p1.out", up=1)
    left.wait_until_succeeds("ping -c 1 -W 1 right", timeout=20)
