"""The fabric's vhost-user data path with real guests: ``datapath: vhost-user``.

One lab: two VMs whose NICs the fabric serves over vhost-user (it reads and
writes their rings in guest memory) and a namespace host on a tap, on one
segment. The same test then snapshots, restores and restarts a VM, the moments
where QEMU stops the rings, saves their state, and connects again.
"""

import re

from vboxlab.lab import Lab
from vboxlab.net import Topology

from .helpers import qemu_pids

LAN = {
    "datapath": "vhost-user",
    "segments": {"lan": {"subnet": "10.67.0.0/24"}},
    "nodes": {"a": None, "b": None, "n": {"provider": "netns"}},
    "links": [{"between": ["a", "lan"]}, {"between": ["b", "lan"]}, {"between": ["n", "lan"]}],
}


def rtt_min_ms(output):
    return float(re.search(r"= ([\d.]+)/", output).group(1))


def test_vms_on_the_vhost_user_data_path_carry_traffic_through_snapshots_and_restarts(tmp_path):
    base = tmp_path / "labs"
    with Lab(base=base) as lab:
        network = lab.network(Topology.from_dict(LAN), seed=3)
        a, b, n = lab.node("a"), lab.node("b"), lab.node("n")
        for vm in (a, b):  # really on that path: QEMU connects to the fabric's socket
            assert [nic.backend for nic in vm.handle.launch.nics] == ["vhost-user"]
        assert sorted(p.name for p in (lab.dir / "vhost").iterdir()) == ["p0.sock", "p1.sock"]
        b.succeed("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1M count=4 "
                  "2>/dev/null && httpd -p 80 -h /tmp/www")
        b.wait_for_port(80)
        a.succeed("wget -q -O /tmp/f http://b/f")  # bulk data through both guests' rings
        assert a.succeed("md5sum < /tmp/f") == b.succeed("md5sum < /tmp/www/f")
        n.succeed("ping -c 2 -W 2 a")  # a tap port and a vhost-user port on one switch
        link = network.link("a", "lan").set(delay="15ms")
        assert rtt_min_ms(a.succeed("ping -c 3 -i 0.3 b | tail -1")) >= 30.0
        link.set(delay="0ms")
        received = link.counters()["b_to_a"]["tx_packets"]
        assert received > 2500  # the 4 MB (2,900 full frames) came in on a's receive ring
        assert link.counters()["b_to_a"]["drop_full"] == 0

        a.snapshot("wired")  # QEMU stops the rings, saves them with the guest's memory
        a.succeed("touch /tmp/after && ping -c 1 -W 2 b")
        a.restore("wired")
        a.fail("test -e /tmp/after")
        a.succeed("ping -c 2 -W 2 b && wget -q -O /dev/null http://b/f")
        a.stop()
        a.start()  # a new QEMU: it connects to the fabric's socket again
        a.wait_ready()
        a.wait_until_succeeds("ping -c 1 -W 1 b", timeout=30)
        a.succeed("wget -q -O /dev/null http://b/f")
        assert "vhost-user" not in (lab.dir / "fabric.log").read_text()  # no complaint
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []
