"""Topologies built into running labs: names, addresses, links changed mid-test, capture."""

import re
import struct
import subprocess

import pytest

from vboxlab.errors import ConfigError
from vboxlab.lab import Lab
from vboxlab.net import Topology
from vboxlab.pytest.policy import require_tool

from .helpers import qemu_pids

TWO_SITES = {
    "segments": {"site-a": {"subnet": "10.77.0.0/24"}, "site-b": None},
    "nodes": {"alpha": None, "beta": {"memory": 192}},
    "links": [
        {"between": ["alpha", "site-a"]},
        {"between": ["beta", "site-b"]},
        {"between": ["site-a", "site-b"], "delay": "10ms"},
    ],
}


def rtt_min_ms(output):
    return float(re.search(r"= ([\d.]+)/", output).group(1))


@pytest.fixture
def lab(tmp_path):
    base = tmp_path / "labs"
    with Lab(base=base) as the_lab:
        yield the_lab
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


def test_a_topology_runs_and_its_links_change_while_the_test_runs(lab, tmp_path):
    network = lab.network(Topology.from_dict(TWO_SITES), seed=1)
    alpha, beta = lab.node("alpha"), lab.node("beta")
    assert "10.77.0.2/24" in beta.succeed("ip -4 addr show eth1")
    assert rtt_min_ms(alpha.succeed("ping -c 3 -i 0.3 beta | tail -1")) >= 20.0
    beta.succeed("mkdir -p /tmp/www && dd if=/dev/urandom of=/tmp/www/f bs=1M count=2 "
                 "2>/dev/null && httpd -p 80 -h /tmp/www")
    beta.wait_for_port(80)
    alpha.succeed("wget -q -O /tmp/f http://beta/f")  # bulk data crosses the fabric intact
    assert alpha.succeed("md5sum < /tmp/f") == beta.succeed("md5sum < /tmp/www/f")
    trunk = lab.link("site-a", "site-b").set(delay="40ms")
    assert rtt_min_ms(alpha.succeed("ping -c 3 -i 0.3 beta | tail -1")) >= 80.0
    trunk.set(direction="a_to_b", delay="0ms").set(direction="b_to_a", delay="0ms")
    trunk.down()
    alpha.fail("ping -c 2 -W 1 beta")
    assert trunk.counters()["a_to_b"]["drop_down"] > 0
    trunk.up()
    alpha.wait_until_succeeds("ping -c 1 -W 1 beta", timeout=20)
    with network.capture("alpha", "site-a", tmp_path) as pcaps:
        alpha.succeed("ping -c 3 -i 0.2 beta")
    data = pcaps["a_to_b"].read_bytes()
    offset, icmp = 24, 0
    while offset < len(data):
        incl = struct.unpack("<IIII", data[offset:offset + 16])[2]
        packet = data[offset + 16:offset + 16 + incl]
        if packet[12:14] == b"\x08\x00" and packet[23] == 1:
            icmp += 1
        offset += 16 + incl
    assert icmp == 3  # the three echo requests alpha sent
    read = subprocess.run([require_tool("tcpdump", "tcpdump"), "-nr", str(pcaps["a_to_b"])],
                          capture_output=True, text=True, check=True)
    assert read.stdout.count("ICMP echo request") == 3
    fields = subprocess.run(
        [require_tool("tshark", "tshark"), "-r", str(pcaps["a_to_b"]), "-Y", "icmp.type == 8",
         "-T", "fields", "-e", "ip.src", "-e", "ip.dst"],
        capture_output=True, text=True, check=True)
    assert fields.stdout.splitlines() == ["10.77.0.1\t10.77.0.2"] * 3


def test_link_settings_are_checked(lab):
    lab.network(Topology.from_dict(TWO_SITES))
    with pytest.raises(ConfigError, match="no link between 'alpha' and 'beta'"):
        lab.link("alpha", "beta")
    with pytest.raises(ConfigError, match="over 100%"):
        lab.link("alpha", "site-a").set(loss="120%")
    with pytest.raises(ConfigError, match="no node 'gamma'"):
        lab.node("gamma")
    with pytest.raises(ConfigError, match="already runs a network"):
        lab.network(Topology.from_dict(TWO_SITES))


def test_a_failing_network_test_gets_its_packet_captures(pytester, tmp_path):
    pytester.makefile(".yaml", pair="""
        nodes: {left: {}, right: {}}
        links:
          - between: [left, right]
            delay: 2ms
    """)
    pytester.makepyfile("""
        import pytest

        @pytest.mark.lab(topology="pair.yaml")
        def test_fails_after_traffic(network, lab):
            lab.node("left").succeed("ping -c 2 right")
            assert False, "deliberate"
    """)
    reports = tmp_path / "reports"
    result = pytester.runpytest_subprocess("--lab-dir", str(tmp_path / "labs"),
                                           "--lab-timeline-dir", str(reports))
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*vboxlab packet captures*", "*left-to-right.pcap*"])
    pcap = next(reports.glob("pcaps/*/left-to-right.pcap"))
    assert pcap.stat().st_size > 24 + 2 * (16 + 98)  # header and the two echo requests
