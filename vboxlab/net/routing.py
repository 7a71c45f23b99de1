"""Static routes for a topology: every node reaches every subnet over the fewest hops.

Each subnet that is not on a node's own interfaces is routed via the neighbour
that starts a shortest path to it (breadth-first over nodes, ties broken by
name so the result never changes between runs). Nodes that others route
through forward IPv4.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vboxlab.net.topology import Topology


@dataclass
class NodeRoutes:
    """What one node needs beyond its own interfaces."""

    routes: list[tuple[IPv4Network, IPv4Address]] = field(default_factory=list)
    forward: bool = False


def static_routes(topology: Topology) -> dict[str, NodeRoutes]:
    """Routes and forwarding for every node of ``topology``."""
    attached: dict[str, list[tuple[IPv4Network, IPv4Address]]] = {n: [] for n in topology.nodes}
    on_network: dict[IPv4Network, list[tuple[str, IPv4Address]]] = {}
    for iface in topology.interfaces:
        attached[iface.node].append((iface.network, iface.address))
        on_network.setdefault(iface.network, []).append((iface.node, iface.address))
    result = {name: NodeRoutes() for name in topology.nodes}
    for source in sorted(topology.nodes):
        known = {net for net, _ in attached[source]}
        first_hop: dict[str, IPv4Address] = {}
        queue: deque[str] = deque()
        for net, _ in sorted(attached[source]):
            for neighbour, address in sorted(on_network[net]):
                if neighbour != source and neighbour not in first_hop:
                    first_hop[neighbour] = address
                    queue.append(neighbour)
        while queue:
            node = queue.popleft()
            via = first_hop[node]
            for net, _ in sorted(attached[node]):
                if net in known:
                    continue
                known.add(net)
                result[source].routes.append((net, via))
                for origin, _ in sorted(on_network[net]):
                    if origin not in first_hop and origin != source:
                        first_hop[origin] = via
                        queue.append(origin)
    owner = {i.address: i.node for i in topology.interfaces}
    for node_routes in result.values():
        for _, via in node_routes.routes:
            result[owner[via]].forward = True
    return result
