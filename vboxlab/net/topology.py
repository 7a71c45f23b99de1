"""Topologies as data: nodes, segments (switches) and links, from YAML or Python.

A topology is pure data; the fabric that realises it is separate. Naming scheme,
written down once:

* every connection is a *link* between two endpoints, each a node or a segment:
  node-segment attaches the node to that switch, node-node makes a point-to-point
  segment called ``<a>--<b>``, segment-segment is a trunk between two switches
  (a WAN, say);
* a node's links get interfaces ``eth1``, ``eth2``, ... in the order the links are
  listed (``eth0`` stays the management NIC the lab reaches the node through);
* segments joined by trunks form one L2 domain with one subnet (given on any of
  them; two different ones are an error); a domain without a ``subnet`` gets
  ``10.<100+k>.0.0/24`` (point-to-point ones ``10.250.x.y/30``) avoiding the
  subnets that are given; nodes get ``.1``, ``.2``, ... in link order, skipping
  addresses given explicitly;
* every node resolves every other node's name to its first address.

Link properties apply to both directions; ``a_to_b`` and ``b_to_a`` override them
for one direction (``a`` is the first endpoint). Errors name the file, the line
and the bad value.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vboxlab.errors import ConfigError
from vboxlab.net.units import parse_duration, parse_percent, parse_rate, parse_size

Network = ipaddress.IPv4Network
Address = ipaddress.IPv4Address


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GilbertElliott(_Strict):
    """Bursty loss: p (good->bad), r (bad->good), loss in bad (1-h) and good (1-k) states."""

    p: float = Field(ge=0, le=1)
    r: float = Field(ge=0, le=1)
    h: float = Field(0.0, ge=0, le=1)
    k: float = Field(1.0, ge=0, le=1)


class Impairment(_Strict):
    """What one direction of a link does to frames (units parsed: seconds, fractions, bit/s)."""

    delay: float = 0.0
    jitter: float = 0.0
    reorder: bool = False
    loss: float = 0.0
    loss_model: GilbertElliott | None = None
    rate: int | None = None
    queue: int | None = None
    duplicate: float = 0.0
    corrupt: float = 0.0
    mtu: int = Field(1500, ge=68, le=65535)
    up: bool = True

    @field_validator("delay", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: object) -> float:
        seconds = parse_duration(value) if not str(value).strip().startswith("-") else -1
        if seconds < 0:
            raise ValueError(f"{value!r} is negative; a delay cannot be")
        return seconds

    @field_validator("loss", "duplicate", "corrupt", mode="before")
    @classmethod
    def _percent(cls, value: object) -> float:
        if str(value).strip().startswith("-"):
            raise ValueError(f"{value!r} is negative")
        return parse_percent(value)

    @field_validator("rate", mode="before")
    @classmethod
    def _rate(cls, value: object) -> int | None:
        return None if value is None else parse_rate(value)

    @field_validator("queue", mode="before")
    @classmethod
    def _queue(cls, value: object) -> int | None:
        if value is None:
            return None
        size = parse_size(value)
        if size <= 0:
            raise ValueError(f"queue {value!r} must be above zero")
        return size

    def merged(self, changes: dict[str, Any]) -> Impairment:
        """A copy with ``changes`` (raw values, units parsed) applied."""
        parsed = Impairment.model_validate(changes)
        return self.model_copy(update={key: getattr(parsed, key) for key in changes})


_IMPAIRMENT_FIELDS = set(Impairment.model_fields)


class LinkSpec(_Strict):
    """A link as written: two endpoints, addresses, properties and per-direction overrides."""

    between: tuple[str, str]
    addresses: dict[str, ipaddress.IPv4Address] = Field(default_factory=dict)
    a_to_b: dict[str, Any] = Field(default_factory=dict)
    b_to_a: dict[str, Any] = Field(default_factory=dict)
    properties: Impairment = Field(default_factory=Impairment)

    @model_validator(mode="before")
    @classmethod
    def _gather_properties(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            raw = dict(raw)
            props = {k: raw.pop(k) for k in list(raw) if k in _IMPAIRMENT_FIELDS}
            raw["properties"] = props
        return raw

    @field_validator("a_to_b", "b_to_a")
    @classmethod
    def _check_direction(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = set(value) - _IMPAIRMENT_FIELDS
        if unknown:
            raise ValueError(f"unknown link properties {sorted(unknown)}; known: "
                             f"{', '.join(sorted(_IMPAIRMENT_FIELDS))}")
        Impairment.model_validate(value)
        return value


class NodeSpec(_Strict):
    """A node: what it runs on and with how much."""

    template: str | None = None
    provider: Literal["qemu", "netns"] | None = None
    memory: int | None = Field(None, ge=64)
    cpus: int | None = Field(None, ge=1, le=64)


class SegmentSpec(_Strict):
    """A segment (switch): one L2 broadcast domain with one subnet."""

    subnet: ipaddress.IPv4Network | None = None


class Defaults(_Strict):
    template: str = "tiny"
    provider: Literal["qemu", "netns"] = "qemu"
    memory: int = Field(256, ge=64)
    cpus: int = Field(1, ge=1, le=64)


class TopologyFile(_Strict):
    """The YAML document, validated field by field."""

    name: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: dict[str, NodeSpec | None]
    segments: dict[str, SegmentSpec | None] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(default_factory=list)
    #: static: routes over the fewest hops to every subnet (see net/routing.py); none: no routes
    routing: Literal["static", "none"] = "static"

    @field_validator("nodes", "segments")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not name or not name.replace("-", "").isalnum() or not name[0].isalpha() \
                    or len(name) > 20 or name.lower() != name:
                raise ValueError(f"name {name!r}: use 1-20 lower-case letters, digits and '-', "
                                 "starting with a letter")
        return value


@dataclass(frozen=True)
class Interface:
    """One end of a link on a node."""

    node: str
    name: str  # eth1, eth2, ...
    segment: str
    address: Address
    network: Network


@dataclass(frozen=True)
class Link:
    """A realised link: endpoints, the segment it belongs to, and both directions."""

    a: str
    b: str
    a_to_b: Impairment
    b_to_a: Impairment


@dataclass(frozen=True)
class Node:
    name: str
    template: str
    provider: str
    memory: int
    cpus: int


class Topology:
    """A validated topology with its subnets, interfaces and addresses worked out."""

    def __init__(self, spec: TopologyFile, name: str, source: str = "<python>",
                 lines: dict[tuple[Any, ...], int] | None = None) -> None:
        self.spec = spec
        self.name = spec.name or name
        self.source = source
        self._lines = lines or {}
        d = spec.defaults
        self.nodes = {n: Node(n, (s.template if s and s.template else d.template),
                              (s.provider if s and s.provider else d.provider),
                              (s.memory if s and s.memory else d.memory),
                              (s.cpus if s and s.cpus else d.cpus))
                      for n, s in spec.nodes.items()}
        self.segments: dict[str, Network] = {}
        self.links: list[Link] = []
        self.interfaces: list[Interface] = []
        self._build()

    # -- errors -----------------------------------------------------------
    def _error(self, path: tuple[Any, ...], message: str) -> ConfigError:
        line = _line_for(self._lines, path)
        where = f"{self.source}:{line}" if line else self.source
        field = ".".join(str(p) for p in path)
        return ConfigError(f"{where}: {field}: {message}")

    # -- working it out -------------------------------------------------
    def _build(self) -> None:
        spec = self.spec
        clash = set(spec.nodes) & set(spec.segments)
        if clash:
            raise self._error(("segments", sorted(clash)[0]),
                              "is both a node and a segment; rename one")
        domain = self._domains()
        given: dict[str, Network] = {}
        for name, seg in spec.segments.items():
            if seg and seg.subnet:
                root = domain[name]
                if root in given and given[root] != seg.subnet:
                    raise self._error(("segments", name, "subnet"),
                                      f"{seg.subnet} differs from {given[root]} given on a "
                                      "segment trunked to it; trunked segments share one subnet")
                given[root] = seg.subnet
        for (a, net_a), (b, net_b) in itertools.combinations(given.items(), 2):
            if net_a.overlaps(net_b):
                raise self._error(("segments", b, "subnet"),
                                  f"{net_b} overlaps {net_a} of segment {a}; give them "
                                  "separate subnets")
        taken = list(given.values())
        auto = _free_subnets(taken, 24, 100)
        for root in dict.fromkeys(domain.values()):
            given.setdefault(root, next(auto))
        for name in spec.segments:
            self.segments[name] = given[domain[name]]
        p2p = _free_subnets(taken, 30, 250)
        members: dict[str, list[tuple[str, int, str]]] = {domain[s]: [] for s in self.segments}
        seen_pairs: set[frozenset[str]] = set()
        for index, link in enumerate(spec.links):
            a, b = link.between
            for end in (a, b):
                if end not in spec.nodes and end not in spec.segments:
                    raise self._error(("links", index, "between"),
                                      f"{end!r} is neither a node nor a segment; nodes: "
                                      f"{', '.join(spec.nodes) or 'none'}; segments: "
                                      f"{', '.join(spec.segments) or 'none'}")
            if a == b:
                raise self._error(("links", index, "between"), f"links {a!r} to itself")
            pair = frozenset((a, b))
            if pair in seen_pairs:
                raise self._error(("links", index, "between"), f"{a} and {b} are linked twice")
            seen_pairs.add(pair)
            for node in link.addresses:
                if node not in (a, b) or node not in spec.nodes:
                    raise self._error(("links", index, "addresses", node),
                                      f"{node!r} is not a node at an end of this link")
            try:
                forward = link.properties.merged(link.a_to_b)
                backward = link.properties.merged(link.b_to_a)
            except ValidationError as exc:
                raise self._error(("links", index), _pydantic_text(exc)) from None
            self.links.append(Link(a, b, forward, backward))
            if a in spec.nodes and b in spec.nodes:
                segment = f"{a}--{b}"
                self.segments[segment] = next(p2p)
                members[segment] = [(a, index, segment), (b, index, segment)]
            elif a in spec.nodes or b in spec.nodes:
                node, segment = (a, b) if a in spec.nodes else (b, a)
                members[domain[segment]].append((node, index, segment))
        self._assign(members)

    def _domains(self) -> dict[str, str]:
        """Each segment's L2 domain: the first segment of its group of trunked segments."""
        parent = {s: s for s in self.spec.segments}

        def find(s: str) -> str:
            while parent[s] != s:
                s = parent[s]
            return s

        for link in self.spec.links:
            a, b = link.between
            if a in parent and b in parent:
                ra, rb = find(a), find(b)
                order = list(self.spec.segments)
                first, second = sorted((ra, rb), key=order.index)
                parent[second] = first
        return {s: find(s) for s in self.spec.segments}

    def _assign(self, members: dict[str, list[tuple[str, int, str]]]) -> None:
        counters: dict[str, int] = {}
        for segment, attached in members.items():
            network = self.segments[segment]
            explicit: dict[str, Address] = {}
            for node, index, _ in attached:
                link = self.spec.links[index]
                if node in link.addresses:
                    address = link.addresses[node]
                    if address not in network or address in (network.network_address,
                                                              network.broadcast_address):
                        raise self._error(("links", index, "addresses", node),
                                          f"{address} is not a host address of {segment}'s "
                                          f"subnet {network}")
                    if address in explicit.values():
                        raise self._error(("links", index, "addresses", node),
                                          f"{address} is used twice on segment {segment}")
                    explicit[node] = address
            hosts = (h for h in network.hosts() if h not in explicit.values())
            for node, _, attached_to in attached:
                chosen = explicit.get(node) or next(hosts, None)
                if chosen is None:
                    raise self._error(("segments", segment),
                                      f"subnet {network} has no address left for {node}")
                address = chosen
                counters[node] = counters.get(node, 0) + 1
                self.interfaces.append(Interface(node, f"eth{counters[node]}", attached_to,
                                                 address, network))

    # -- reading ----------------------------------------------------------
    @property
    def needs_root(self) -> bool:
        """True if some node runs in a network namespace (that needs root)."""
        return any(node.provider == "netns" for node in self.nodes.values())

    def addresses(self, node: str) -> list[Address]:
        if node not in self.nodes:
            raise ConfigError(f"topology {self.name} has no node {node!r}; nodes: "
                              f"{', '.join(self.nodes)}")
        return [i.address for i in self.interfaces if i.node == node]

    def hosts_file(self) -> str:
        """/etc/hosts lines: each node's name on its first address."""
        lines = []
        for node in self.nodes:
            found = self.addresses(node)
            if found:
                lines.append(f"{found[0]} {node}")
        return "\n".join(lines) + ("\n" if lines else "")

    def link(self, a: str, b: str) -> Link:
        for link in self.links:
            if {link.a, link.b} == {a, b}:
                return link
        raise ConfigError(f"topology {self.name} has no link between {a!r} and {b!r}")

    def describe(self) -> str:
        """A text summary: nodes with interfaces and addresses, then links."""
        out = [f"topology {self.name}"]
        from vboxlab.net.routing import static_routes

        routing = static_routes(self) if self.spec.routing == "static" else {}
        for node in self.nodes.values():
            if node.provider == "netns":
                out.append(f"  node {node.name} (netns)")
            else:
                out.append(f"  node {node.name} ({node.provider}, {node.template}, "
                           f"{node.memory} MiB, {node.cpus} cpu)")
            for iface in (i for i in self.interfaces if i.node == node.name):
                out.append(f"    {iface.name} {iface.address}/{iface.network.prefixlen} "
                           f"on {iface.segment}")
            if node.name in routing:
                for network, via in routing[node.name].routes:
                    out.append(f"    route {network} via {via}")
                if routing[node.name].forward:
                    out.append("    forwards IPv4 (a router)")
        for link in self.links:
            out.append(f"  link {link.a} <-> {link.b}: {_props(link.a_to_b)} / "
                       f"{_props(link.b_to_a)}")
        return "\n".join(out)

    # -- building ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "topology",
                  source: str = "<python>",
                  lines: dict[tuple[Any, ...], int] | None = None) -> Topology:
        """Validate a topology given as Python data (the YAML's structure)."""
        try:
            spec = TopologyFile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            path = tuple(p for p in err["loc"] if p != "properties")  # our grouping, not theirs
            line = _line_for(lines or {}, path)
            where = f"{source}:{line}" if line else source
            raise ConfigError(f"{where}: {'.'.join(str(p) for p in path) or '(top)'}: "
                              f"{err['msg']} (got {err.get('input')!r})") from None
        return cls(spec, name, source, lines)


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such topology file") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: a topology is a mapping with nodes, segments and links")
    lines: dict[tuple[Any, ...], int] = {}
    _collect_lines(node, (), lines)
    return Topology.from_dict(data, path.stem, str(path), lines)


def _collect_lines(node: yaml.Node | None, path: tuple[Any, ...],
                   lines: dict[tuple[Any, ...], int]) -> None:
    if node is None:
        return
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*path, key.value)] = key.start_mark.line + 1
            _collect_lines(value, (*path, key.value), lines)
            lines[(*path, key.value)] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, (*path, index), lines)


def _line_for(lines: dict[tuple[Any, ...], int], path: tuple[Any, ...]) -> int | None:
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def _pydantic_text(exc: ValidationError) -> str:
    err = exc.errors()[0]
    return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})"


def _free_subnets(taken: list[Network], prefix: int, second: int) -> Any:
    """Subnets 10.<second+k>.0.0/<prefix> (or /30s inside 10.<second>.0.0/16) not in ``taken``."""
    if prefix == 30:
        candidates: Any = ipaddress.ip_network(f"10.{second}.0.0/16").subnets(new_prefix=30)
    else:
        candidates = (ipaddress.ip_network(f"10.{k}.0.0/{prefix}") for k in range(second, 250))
    for candidate in candidates:
        if not any(candidate.overlaps(t) for t in taken):
            yield candidate


def _props(imp: Impairment) -> str:
    parts = []
    if imp.delay:
        parts.append(f"delay {imp.delay * 1000:g}ms")
    if imp.jitter:
        parts.append(f"jitter {imp.jitter * 1000:g}ms")
    if imp.loss:
        parts.append(f"loss {imp.loss * 100:g}%")
    if imp.rate:
        parts.append(f"rate {imp.rate / 1e6:g}mbit")
    if not imp.up:
        parts.append("down")
    return ", ".join(parts) or "clean"
