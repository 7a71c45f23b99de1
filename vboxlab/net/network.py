"""A topology built into a running lab: fabric, ports, NICs, machines, and link handles.

``lab.network(topology)`` maps the model onto the fabric (the naming written
once): every interface of a node is a fabric port ``p<N>``, every trunk a fabric
trunk ``t<K>``. The model's directions become fabric directions like this:

* node-segment link (node first): ``a_to_b`` = ``p<N>.in``, ``b_to_a`` = ``p<N>.out``
  (swapped when the segment is written first);
* node-node link: ``a_to_b`` = ``p<A>.in``, ``b_to_a`` = ``p<B>.in``;
* segment-segment trunk: ``a_to_b`` = ``t<K>.ab``, ``b_to_a`` = ``t<K>.ba``.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import ConfigError
from vboxlab.net.fabric import Fabric
from vboxlab.net.fabric.control import socket_pair
from vboxlab.net.routing import NodeRoutes, static_routes
from vboxlab.net.topology import Impairment, Topology
from vboxlab.net.wire import mac_for
from vboxlab.providers.base import NicSpec
from vboxlab.providers.netns import NetnsHost, TapSpec, require_root

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine

#: queue given to a rate-limited direction that sets none: 100 ms at its rate, 16 KiB at least
DEFAULT_QUEUE_SECONDS = 0.1


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


@dataclass
class LinkHandle:
    """One link of a running network, to change while the test runs."""

    network: Network
    a: str
    b: str
    a_to_b_dir: str
    b_to_a_dir: str
    a_to_b: Impairment
    b_to_a: Impairment

    def _directions(self, direction: str | None) -> list[str]:
        if direction not in (None, "a_to_b", "b_to_a"):
            raise ConfigError(f"direction {direction!r}: use 'a_to_b', 'b_to_a' or None (both)")
        return ["a_to_b", "b_to_a"] if direction is None else [direction]

    def set(self, direction: str | None = None, **properties: Any) -> LinkHandle:
        """Change properties (model units: ``delay="80ms"``, ``loss="2%"``, ``rate="10mbit"``)."""
        for which in self._directions(direction):
            current: Impairment = getattr(self, which)
            try:
                updated = current.merged(properties)
            except Exception as exc:
                raise ConfigError(f"link {self.a}<->{self.b}: {exc}") from None
            setattr(self, which, updated)
            self.network.fabric.set(getattr(self, f"{which}_dir"), **fabric_settings(updated))
        return self

    def down(self, direction: str | None = None) -> LinkHandle:
        """Cut the link (both directions unless one is named): a partition."""
        return self.set(direction, up=False)

    def up(self, direction: str | None = None) -> LinkHandle:
        return self.set(direction, up=True)

    def counters(self) -> dict[str, dict[str, int]]:
        """Packets, bytes and drops by cause, per direction."""
        stats = self.network.fabric.stats()
        return {"a_to_b": stats[self.a_to_b_dir], "b_to_a": stats[self.b_to_a_dir]}


class Network:
    """The fabric and machines of one topology in a lab."""

    def __init__(self, lab: Lab, topology: Topology, *, seed: int | None = None) -> None:
        if topology.needs_root:
            netns_nodes = [n.name for n in topology.nodes.values() if n.provider == "netns"]
            require_root(f"topology {topology.name} (netns nodes {', '.join(netns_nodes)})")
        self.lab = lab
        self.topology = topology
        self.machines: dict[str, Machine] = {}
        self.fabric = Fabric(lab.dir, tied=not lab.keep)
        self._sockets: list[socket.socket] = []
        self._links: dict[frozenset[str], LinkHandle] = {}
        try:
            self._build(seed)
        except BaseException:
            for name in list(self.machines):
                if name in lab.machines:
                    lab.remove_vm(name)
            self.close()
            raise

    def _build(self, seed: int | None) -> None:
        lab, topology = self.lab, self.topology
        segment_ids = {name: index for index, name in enumerate(topology.segments)}
        port_of: dict[tuple[str, str], int] = {}
        nics: dict[str, list[NicSpec]] = {name: [] for name in topology.nodes}
        taps: dict[str, list[TapSpec]] = {name: [] for name in topology.nodes}
        port_fds: dict[int, int] = {}
        for port, iface in enumerate(topology.interfaces):
            port_of[(iface.node, iface.segment)] = port
            mac = mac_for(lab.id, iface.node, iface.name)
            cidr = f"{iface.address}/{iface.network.prefixlen}"
            if topology.nodes[iface.node].provider == "netns":
                taps[iface.node].append(TapSpec(iface.name, mac, cidr))
                continue
            near, far = socket_pair()
            self._sockets += [near, far]
            port_fds[port] = far.fileno()
            nics[iface.node].append(NicSpec(iface.name, mac, near.fileno(), cidr))
        hosts = topology.hosts_file()
        routing = static_routes(topology) if topology.spec.routing == "static" else {}
        none = NodeRoutes()

        def routes_of(name: str) -> tuple[list[tuple[str, str]], bool]:
            found = routing.get(name, none)
            return [(str(net), str(via)) for net, via in found.routes], found.forward

        # namespace hosts first: their tap descriptors are fabric ports
        for name, node in topology.nodes.items():
            if node.provider == "netns":
                routes, forward = routes_of(name)
                host = lab.netns_host(name, taps[name], hosts=hosts, routes=routes,
                                      forward=forward)
                self.machines[name] = host
                assert isinstance(host.handle, NetnsHost)
                tap_fds = iter(host.handle.tap_fds)
                for port, iface in enumerate(topology.interfaces):
                    if iface.node == name:
                        port_fds[port] = next(tap_fds)
        lab.ledger.add("process", "fabric", marker=str(lab.dir / "fabric.sock"))
        lab.ledger.add("socket", "fabric control", path=str(lab.dir / "fabric.sock"))
        self.fabric.start(list(port_fds.values()))
        if seed is not None:
            self.fabric.seed(seed)
        for port, iface in enumerate(topology.interfaces):
            self.fabric.add_port(port, port_fds[port], segment_ids[iface.segment])
        trunk = 0
        for link in topology.links:
            directions = self._directions(link.a, link.b, port_of, trunk, segment_ids)
            if link.a in topology.segments and link.b in topology.segments:
                trunk += 1
            handle = LinkHandle(self, link.a, link.b, directions[0], directions[1],
                                link.a_to_b, link.b_to_a)
            self.fabric.set(directions[0], **fabric_settings(link.a_to_b))
            self.fabric.set(directions[1], **fabric_settings(link.b_to_a))
            self._links[frozenset((link.a, link.b))] = handle
        for name, node in topology.nodes.items():
            if node.provider != "netns":
                routes, forward = routes_of(name)
                self.machines[name] = lab.vm(name, template=node.template, memory=node.memory,
                                             cpus=node.cpus, nics=nics[name], hosts=hosts,
                                             routes=routes, forward=forward)

    def _directions(self, a: str, b: str, port_of: dict[tuple[str, str], int], trunk: int,
                    segment_ids: dict[str, int]) -> tuple[str, str]:
        topo = self.topology
        if a in topo.segments and b in topo.segments:
            self.fabric.add_trunk(trunk, segment_ids[a], segment_ids[b])
            return f"t{trunk}.ab", f"t{trunk}.ba"
        if a in topo.nodes and b in topo.nodes:
            segment = f"{a}--{b}"
            return f"p{port_of[(a, segment)]}.in", f"p{port_of[(b, segment)]}.in"
        if a in topo.nodes:
            port = port_of[(a, b)]
            return f"p{port}.in", f"p{port}.out"
        port = port_of[(b, a)]
        return f"p{port}.out", f"p{port}.in"

    def node(self, name: str) -> Machine:
        if name not in self.machines:
            raise ConfigError(f"no node {name!r} in topology {self.topology.name}; nodes: "
                              f"{', '.join(self.machines)}")
        return self.machines[name]

    def link(self, a: str, b: str) -> LinkHandle:
        handle = self._links.get(frozenset((a, b)))
        if handle is None:
            known = ", ".join(f"{h.a}<->{h.b}" for h in self._links.values())
            raise ConfigError(f"no link between {a!r} and {b!r} in topology "
                              f"{self.topology.name}; links: {known}")
        return handle

    @contextmanager
    def capture(self, a: str, b: str, folder: Path | None = None) -> Iterator[dict[str, Path]]:
        """Capture both directions of a link to pcap files while the block runs."""
        handle = self.link(a, b)
        folder = folder or (self.lab.dir / "captures")
        folder.mkdir(parents=True, exist_ok=True)
        paths = {"a_to_b": folder / f"{a}-to-{b}.pcap", "b_to_a": folder / f"{b}-to-{a}.pcap"}
        self.fabric.capture(handle.a_to_b_dir, paths["a_to_b"])
        self.fabric.capture(handle.b_to_a_dir, paths["b_to_a"])
        try:
            yield paths
        finally:
            self.fabric.capture(handle.a_to_b_dir, None)
            self.fabric.capture(handle.b_to_a_dir, None)

    def capture_all(self, folder: Path) -> list[Path]:
        """Capture every direction of every link into ``folder`` while the fabric runs."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for handle in self._links.values():
            for direction, source, target in ((handle.a_to_b_dir, handle.a, handle.b),
                                              (handle.b_to_a_dir, handle.b, handle.a)):
                path = folder / f"{source}-to-{target}.pcap"
                self.fabric.capture(direction, path)
                paths.append(path)
        return paths

    def close(self) -> None:
        self.fabric.close()
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
