"""A topology turned into what the lab must create: nodes with NICs, fabric ports, trunks, links.

Pure data in, pure data out: no VM, process or socket is needed to compute or
test a plan. The lab realises it (``Lab.network``): it starts the fabric,
creates each node through its provider with the planned NICs, adds each NIC's
descriptor as the planned fabric port, and sets every link direction.

The fabric's naming, written once: every interface of a node is a fabric port
``p<N>`` (N in interface order), every trunk between two segments ``t<K>``. A
model direction becomes a fabric direction like this:

* node-segment link (node first): ``a_to_b`` = ``p<N>.in``, ``b_to_a`` = ``p<N>.out``
  (swapped when the segment is written first);
* node-node link: ``a_to_b`` = ``p<A>.in``, ``b_to_a`` = ``p<B>.in``;
* segment-segment trunk: ``a_to_b`` = ``t<K>.ab``, ``b_to_a`` = ``t<K>.ba``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from vboxlab.net.routing import NodeRoutes, static_routes
from vboxlab.net.topology import Impairment, Topology, describe_impairment

#: queue given to a rate-limited direction that sets none: 100 ms at its rate, 16 KiB at least
DEFAULT_QUEUE_SECONDS = 0.1


def mac_for(*parts: str) -> str:
    """A stable, locally administered unicast MAC for a NIC."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return "52:54:" + ":".join(f"{b:02x}" for b in digest[:4])


def fabric_settings(imp: Impairment) -> dict[str, Any]:
    """The fabric's ``set`` arguments for one direction of the model."""
    settings: dict[str, Any] = {
        "delay_ns": int(imp.delay * 1e9), "jitter_ns": int(imp.jitter * 1e9),
        "reorder": int(imp.reorder), "dup": imp.duplicate, "corrupt": imp.corrupt,
        "mtu": imp.mtu, "up": int(imp.up), "rate_bps": imp.rate or 0,
        "queue_bytes": imp.queue or (max(16384, int((imp.rate or 0) / 8 * DEFAULT_QUEUE_SECONDS))
                                     if imp.rate else 0),
    }
    if imp.loss_model is not None:
        model = imp.loss_model
        settings["ge"] = f"{model.p},{model.r},{model.h},{model.k}"
    else:
        settings["loss"] = imp.loss
    return settings


@dataclass(frozen=True)
class PlannedNic:
    """One interface of a node: its name in the guest, MAC, address and fabric port."""

    name: str
    mac: str
    address: str  # CIDR
    port: int
    segment: int  # the fabric's segment number


@dataclass(frozen=True)
class NodePlan:
    """One node to create: provider, resources, NICs, routes."""

    name: str
    provider: str
    template: str
    memory: int
    cpus: int
    nics: tuple[PlannedNic, ...]
    routes: tuple[tuple[str, str], ...]
    forward: bool
    #: the libvirt URI of the remote host it runs on (None: this machine)
    host_uri: str | None = None


@dataclass(frozen=True)
class TrunkPlan:
    """A trunk joining two segments of the fabric."""

    id: int
    segment_a: int
    segment_b: int


@dataclass(frozen=True)
class LinkPlan:
    """A link of the model and the two fabric directions that carry it."""

    a: str
    b: str
    a_to_b_dir: str
    b_to_a_dir: str
    a_to_b: Impairment
    b_to_a: Impairment


@dataclass(frozen=True)
class NetworkPlan:
    """Everything the lab creates for one topology, in creation order."""

    topology: str
    nodes: tuple[NodePlan, ...]
    trunks: tuple[TrunkPlan, ...]
    links: tuple[LinkPlan, ...]
    hosts: str  # /etc/hosts lines every node gets

    def node(self, name: str) -> NodePlan:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def providers(self) -> dict[tuple[str, str | None], list[str]]:
        """(provider name, remote host URI or None) -> the nodes it runs."""
        found: dict[tuple[str, str | None], list[str]] = {}
        for node in self.nodes:
            found.setdefault((node.provider, node.host_uri), []).append(node.name)
        return found


def plan_network(topology: Topology, lab_id: str) -> NetworkPlan:
    """The plan for ``topology`` in the lab ``lab_id`` (MACs depend on it)."""
    segment_ids = {name: index for index, name in enumerate(topology.segments)}
    port_of: dict[tuple[str, str], int] = {}
    nics: dict[str, list[PlannedNic]] = {name: [] for name in topology.nodes}
    for port, iface in enumerate(topology.interfaces):
        port_of[(iface.node, iface.segment)] = port
        nics[iface.node].append(PlannedNic(
            iface.name, mac_for(lab_id, iface.node, iface.name),
            f"{iface.address}/{iface.network.prefixlen}", port, segment_ids[iface.segment]))
    routing = static_routes(topology) if topology.spec.routing == "static" else {}
    nodes = []
    for name, node in topology.nodes.items():
        found = routing.get(name, NodeRoutes())
        nodes.append(NodePlan(name, node.provider, node.template, node.memory, node.cpus,
                              tuple(nics[name]),
                              tuple((str(net), str(via)) for net, via in found.routes),
                              found.forward, node.host_uri))
    trunks: list[TrunkPlan] = []
    links: list[LinkPlan] = []
    for link in topology.links:
        a, b = link.a, link.b
        if a in topology.segments and b in topology.segments:
            trunk = TrunkPlan(len(trunks), segment_ids[a], segment_ids[b])
            trunks.append(trunk)
            forward, backward = f"t{trunk.id}.ab", f"t{trunk.id}.ba"
        elif a in topology.nodes and b in topology.nodes:
            segment = f"{a}--{b}"
            forward, backward = f"p{port_of[(a, segment)]}.in", f"p{port_of[(b, segment)]}.in"
        elif a in topology.nodes:
            port = port_of[(a, b)]
            forward, backward = f"p{port}.in", f"p{port}.out"
        else:
            port = port_of[(b, a)]
            forward, backward = f"p{port}.out", f"p{port}.in"
        links.append(LinkPlan(a, b, forward, backward, link.a_to_b, link.b_to_a))
    return NetworkPlan(topology.name, tuple(nodes), tuple(trunks), tuple(links),
                       topology.hosts_file())


def describe(topology: Topology) -> str:
    """A text summary: nodes with interfaces, addresses and routes, then links."""
    plan = plan_network(topology, "describe")
    out = [f"topology {topology.name} (data path: {topology.spec.datapath})"]
    for node in plan.nodes:
        if node.provider == "netns":  # runs no template: nothing more to say
            out.append(f"  node {node.name} (netns)")
        else:
            out.append(f"  node {node.name} ({node.provider}, {node.template}, "
                       f"{node.memory} MiB, {node.cpus} cpu)")
        for nic in node.nics:
            segment = next(i.segment for i in topology.interfaces
                           if i.node == node.name and i.name == nic.name)
            out.append(f"    {nic.name} {nic.address} on {segment}")
        for network, via in node.routes:
            out.append(f"    route {network} via {via}")
        if node.forward:
            out.append("    forwards IPv4 (a router)")
    for link in plan.links:
        out.append(f"  link {link.a} <-> {link.b}: {describe_impairment(link.a_to_b)} / "
                   f"{describe_impairment(link.b_to_a)}")
    return "\n".join(out)
