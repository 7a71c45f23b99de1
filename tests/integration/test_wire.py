"""Lab NICs: two guests joined by a direct datagram wire, configured from the host."""

from vboxlab.lab import Lab

from .helpers import qemu_pids

HOSTS = "10.250.0.1 left\n10.250.0.2 right\n"


def test_two_vms_on_a_direct_wire_reach_each_other_by_name(tmp_path):
    base = tmp_path / "labs"
    with Lab(base=base) as lab:
        wire = lab.wire("left", "right", a_address="10.250.0.1/30",
                        b_address="10.250.0.2/30")
        machines = lab.vms({"left": {"nics": [wire.nic("left")], "hosts": HOSTS},
                            "right": {"nics": [wire.nic("right")], "hosts": HOSTS}})
        left, right = machines["left"], machines["right"]
        assert "10.250.0.1/30" in left.succeed("ip -4 addr show eth1")
        assert wire.nic("left").mac in left.succeed("cat /sys/class/net/eth1/address")
        left.succeed("ping -c 3 -W 5 right")
        right.succeed("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/blob bs=1M count=8 "
                      "2>/dev/null && httpd -p 80 -h /tmp/www")
        right.wait_for_port(80)
        left.succeed("wget -q -O /tmp/blob http://right/blob")
        assert left.succeed("md5sum < /tmp/blob") == right.succeed("md5sum < /tmp/www/blob")
        right.stop()  # the lab keeps the wire's sockets: the cable survives a restart
        left.fail("ping -c 1 -W 1 right")
        right.start()
        left.wait_until_succeeds("ping -c 1 -W 1 right", timeout=30)
    assert qemu_pids(str(base)) == []
