"""One example per topology in topologies/: build it with the network fixture, then test it.

The ``network`` fixture builds the topology named by ``@pytest.mark.lab`` (fabric, NICs with
their addresses, machines that resolve each other's names) and tears it down after the test.
"""

import re

import pytest


def rtt_ms(output):
    """min/avg/max of a busybox ping summary line."""
    return [float(x) for x in re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)", output).groups()]


@pytest.mark.ids()  # the traffic raises no IDS alert
@pytest.mark.lab(topology="topologies/star.yaml")
def test_star_clients_reach_the_server_even_over_the_lossy_access_link(network, lab):
    server = lab.node("server")
    server.succeed("mkdir -p /srv && echo up > /srv/status && httpd -p 80 -h /srv")
    server.wait_for_port(80)
    assert lab.node("client1").succeed("wget -q -O - http://server/status") == "up\n"
    # client2's access link adds 30 ms each way, 1 % loss and a 10 Mbit/s limit
    assert lab.node("client2").succeed("wget -q -O - http://server/status") == "up\n"
    assert rtt_ms(lab.node("client2").succeed("ping -c 3 -i 0.3 server | tail -1"))[0] >= 60


@pytest.mark.ids()
@pytest.mark.lab(topology="topologies/line.yaml")
def test_line_each_hop_adds_its_delay(network, lab):
    h1 = lab.node("h1")
    assert rtt_ms(h1.succeed("ping -c 3 -i 0.3 r1 | tail -1"))[0] >= 10
    # h2 is two hops away: the static routes send it through r1, which forwards
    assert "via 10.250.0.2" in h1.succeed("ip route")
    end_to_end = h1.succeed("ping -c 3 -i 0.3 h2")
    assert "ttl=63" in end_to_end  # one router on the way
    assert rtt_ms(end_to_end.splitlines()[-1])[0] >= 20  # both hops' delays


@pytest.mark.ids()
@pytest.mark.lab(topology="topologies/two-sites-wan.yaml", seed=7)
def test_two_sites_see_the_wan_between_them(network, lab):
    a1, a2 = lab.node("a1"), lab.node("a2")
    local = rtt_ms(a1.succeed("ping -c 3 -i 0.3 a2 | tail -1"))
    remote = rtt_ms(a1.succeed("ping -c 5 -i 0.3 b1 | tail -1"))
    assert local[0] < 40  # same site: no WAN in the path
    assert remote[0] >= 70  # 40 ms each way, jitter 5 ms
    a2.succeed("ping -c 1 b1")


@pytest.mark.ids()
@pytest.mark.lab(topology="topologies/cluster-partition.yaml")
def test_cluster_partition_and_heal(network, lab):
    n1, n2 = lab.node("n1"), lab.node("n2")
    n1.succeed("ping -c 1 -W 2 n3")
    trunk = lab.link("rack1", "rack2")
    trunk.down()
    n1.fail("ping -c 2 -W 1 n3")
    n1.succeed("ping -c 1 -W 2 n2")  # the rack itself still works
    trunk.up()
    n2.wait_until_succeeds("ping -c 1 -W 1 n3", timeout=20)


@pytest.mark.root  # namespace hosts need root; outside CI the test skips without it
@pytest.mark.ids()
@pytest.mark.lab(topology="topologies/branch-office.yaml", seed=11)
def test_branch_office_clients_reach_the_vm_server_through_their_router(network, lab):
    server = lab.node("server")
    server.succeed("mkdir -p /srv && echo ok > /srv/health && httpd -p 80 -h /srv")
    server.wait_for_port(80)
    for client in ("c1", "c2", "c3"):
        # the namespace clients use the host's own tools (iputils ping, python3)
        out = lab.node(client).succeed("ping -c 2 -i 0.3 server")
        assert rtt_ms(out.splitlines()[-1])[0] >= 50  # 25 ms each way on the uplink
    fetch = "python3 -c \"import urllib.request as u; print(u.urlopen('http://server/health').read())\""
    assert lab.node("c1").succeed(fetch).strip() == "b'ok\\n'"
    lab.link("gw", "dc").down()  # the uplink fails: the branch is cut off, locally all is well
    lab.node("c2").fail("ping -c 1 -W 1 server")
    lab.node("c2").succeed("ping -c 1 -W 1 c3")
