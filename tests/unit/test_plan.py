"""The network plan: a topology turned into nodes, NICs, fabric ports, trunks and links,
computed as pure data (no VM, process or socket)."""

from pathlib import Path

import pytest

from vboxlab.net import Topology, load_topology
from vboxlab.net.plan import fabric_settings, mac_for, plan_network
from vboxlab.net.topology import Impairment

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"

MIXED = {
    "segments": {"lan": {"subnet": "10.9.0.0/24"}, "wan": None},
    "nodes": {"web": None, "gw": {"provider": "netns"}, "cli": {"memory": 192}},
    "links": [
        {"between": ["web", "lan"]},
        {"between": ["gw", "lan"], "delay": "5ms"},
        {"between": ["wan", "lan"], "loss": "1%"},
        {"between": ["cli", "gw"], "a_to_b": {"rate": "10mbit"}},
    ],
}


def test_a_plan_names_every_port_trunk_and_direction():
    plan = plan_network(Topology.from_dict(MIXED), "lab1")
    assert [n.name for n in plan.nodes] == ["web", "gw", "cli"]
    assert plan.providers == {("qemu", None): ["web", "cli"], ("netns", None): ["gw"]}
    web, gw, cli = plan.nodes
    assert [(n.name, n.address, n.port) for n in web.nics] == [("eth1", "10.9.0.1/24", 0)]
    assert [(n.name, n.port) for n in gw.nics] == [("eth1", 1), ("eth2", 3)]
    assert [(n.name, n.port) for n in cli.nics] == [("eth1", 2)]
    assert gw.nics[0].segment == web.nics[0].segment  # both on lan
    assert gw.nics[1].segment == cli.nics[0].segment != web.nics[0].segment  # cli--gw
    assert cli.memory == 192 and web.memory == 256
    assert gw.forward and not web.forward
    assert [(t.segment_a, t.segment_b) for t in plan.trunks] == [(1, 0)]
    links = {(link.a, link.b): link for link in plan.links}
    assert (links[("web", "lan")].a_to_b_dir, links[("web", "lan")].b_to_a_dir) == \
        ("p0.in", "p0.out")
    assert (links[("wan", "lan")].a_to_b_dir, links[("wan", "lan")].b_to_a_dir) == \
        ("t0.ab", "t0.ba")
    assert (links[("cli", "gw")].a_to_b_dir, links[("cli", "gw")].b_to_a_dir) == \
        ("p2.in", "p3.in")
    assert links[("cli", "gw")].a_to_b.rate == 10_000_000
    assert links[("cli", "gw")].b_to_a.rate is None
    assert "10.9.0.1 web" in plan.hosts


def test_macs_are_stable_per_lab_and_differ_between_labs():
    one = plan_network(Topology.from_dict(MIXED), "lab1")
    again = plan_network(Topology.from_dict(MIXED), "lab1")
    other = plan_network(Topology.from_dict(MIXED), "lab2")
    macs = [nic.mac for node in one.nodes for nic in node.nics]
    assert macs == [nic.mac for node in again.nodes for nic in node.nics]
    assert set(macs).isdisjoint(nic.mac for node in other.nodes for nic in node.nics)
    assert len(set(macs)) == len(macs)
    assert all(m.startswith("52:54:") for m in macs)
    assert mac_for("lab1", "web", "eth1") == one.nodes[0].nics[0].mac


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_topology_plans(path):
    topology = load_topology(path)
    plan = plan_network(topology, "x")
    ports = sorted(nic.port for node in plan.nodes for nic in node.nics)
    assert ports == list(range(len(topology.interfaces)))
    assert len(plan.links) == len(topology.links)


def test_fabric_settings_carry_every_field_in_fabric_units():
    imp = Impairment.model_validate({"delay": "40ms", "jitter": "5ms", "reorder": True,
                                     "loss": "2%", "rate": "8mbit", "duplicate": "1%",
                                     "corrupt": "0.5%", "mtu": 1400, "up": False})
    assert fabric_settings(imp) == {
        "delay_ns": 40_000_000, "jitter_ns": 5_000_000, "reorder": 1, "dup": 0.01,
        "corrupt": 0.005, "mtu": 1400, "up": 0, "rate_bps": 8_000_000,
        "queue_bytes": 100_000, "loss": 0.02}
    bursty = Impairment.model_validate({"loss_model": {"p": 0.1, "r": 0.4, "h": 0.2}})
    settings = fabric_settings(bursty)
    assert settings["ge"] == "0.1,0.4,0.2,1.0" and "loss" not in settings
