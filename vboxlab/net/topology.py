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
  them; two different ones are an error); trunks must not close a loop (a
  broadcast would circle for ever: the fabric is a tree of switches, as a network
  with spanning tree would be); a domain without a ``subnet`` gets
  ``10.<100+k>.0.0/24`` (point-to-point ones ``10.250.x.y/30``) avoiding the
  subnets that are given; nodes get ``.1``, ``.2``, ... in link order, skipping
  addresses given explicitly;
* every node resolves every other node's name to its first address;
* ``hosts`` names hypervisor hosts (``local`` or a libvirt ``qemu+ssh://`` URI) and
  a node's ``host`` places it on one; a node on a remote host runs on the libvirt
  provider there, its NICs crossing to the lab's fabric.

Link properties apply to both directions; ``a_to_b`` and ``b_to_a`` override them
for one direction (``a`` is the first endpoint). ``loss`` (random) and
``loss_model`` (bursty) exclude each other on a link or direction; a direction's
override of either replaces the other. Names of nodes and segments follow
:mod:`vboxlab.names`. Errors name the file, the line and the bad value.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vboxlab.errors import ConfigError
from vboxlab.names import NAME_RULE, is_valid_name
from vboxlab.net.units import parse_duration, parse_percent, parse_rate, parse_size

Network = ipaddress.IPv4Network
Address = ipaddress.IPv4Address
MAX_DELAY = 3600.0  # seconds: the longest delay or jitter a direction may have
MAX_FILE_BYTES = 1 << 20


class TopologyError(ConfigError):
    """A topology that does not validate; ``path`` names the field (``("nodes", "h1",
    "memory")``) when the error concerns one."""

    def __init__(self, message: str, path: tuple[Any, ...] = ()) -> None:
        super().__init__(message)
        self.path = path


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
        if seconds > MAX_DELAY:
            raise ValueError(f"{value!r} is over {MAX_DELAY:g} s; give a shorter delay")
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

    @model_validator(mode="after")
    def _one_loss(self) -> Impairment:
        if self.loss and self.loss_model is not None:
            raise ValueError("loss and loss_model exclude each other: give random loss "
                             "(loss: 2%) or bursty loss (loss_model: {p: ..., r: ...}), not both")
        return self

    def merged(self, changes: dict[str, Any]) -> Impairment:
        """A copy with ``changes`` (raw values, units parsed) applied.

        Setting ``loss`` drops a ``loss_model`` and setting ``loss_model`` drops
        ``loss``: the newer way of losing frames replaces the older one.
        """
        if not isinstance(changes, dict):
            raise ValueError(f"link properties must be a mapping, not {changes!r}")
        parsed = Impairment.model_validate(changes)  # the changes alone, units parsed
        update = {key: getattr(parsed, key) for key in changes}
        if "loss" in changes and "loss_model" not in changes:
            update["loss_model"] = None
        if "loss_model" in changes and "loss" not in changes:
            update["loss"] = 0.0
        return self.model_copy(update=update)


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


def _check_provider(value: str | None) -> str | None:
    if value is None:
        return value
    from vboxlab.providers import available

    known = available()
    if value not in known:
        raise ValueError(f"unknown provider {value!r}; available providers: "
                         f"{', '.join(sorted(known))}")
    return value


class NodeSpec(_Strict):
    """A node: what it runs on and with how much."""

    template: str | None = None
    provider: str | None = None
    memory: int | None = Field(None, ge=64)
    cpus: int | None = Field(None, ge=1, le=64)
    #: a name from the topology's ``hosts`` (default: this machine)
    host: str | None = None

    _provider = field_validator("provider")(_check_provider)


class SegmentSpec(_Strict):
    """A segment (switch): one L2 broadcast domain with one subnet."""

    subnet: ipaddress.IPv4Network | None = None


class Defaults(_Strict):
    template: str = "tiny"
    provider: str = "qemu"
    memory: int = Field(256, ge=64)
    cpus: int = Field(1, ge=1, le=64)

    _provider = field_validator("provider")(_check_provider)


class TopologyFile(_Strict):
    """The YAML document, validated field by field."""

    name: str | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    nodes: dict[str, NodeSpec | None]
    segments: dict[str, SegmentSpec | None] = Field(default_factory=dict)
    links: list[LinkSpec] = Field(default_factory=list)
    #: static: routes over the fewest hops to every subnet (see net/routing.py); none: no routes
    routing: Literal["static", "none"] = "static"
    #: hypervisor hosts nodes may be placed on: NAME -> "local" or a libvirt qemu+ssh:// URI
    hosts: dict[str, str] = Field(default_factory=dict)
    #: how this machine's QEMU nodes meet the fabric: datagram sockets (QEMU's network code
    #: moves each frame), or vhost-user (the fabric reads and writes the guests' rings)
    datapath: Literal["sockets", "vhost-user"] = "sockets"

    @field_validator("nodes", "segments", "hosts")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not is_valid_name(name):
                raise ValueError(f"name {name!r}: use {NAME_RULE}")
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
    #: the libvirt URI of the remote host it runs on (None: this machine)
    host_uri: str | None = None
    #: the name of the host it was placed on (``host:``, or a placement), None: not placed
    host: str | None = None


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
        self._place()
        self.segments: dict[str, Network] = {}
        self.links: list[Link] = []
        self.interfaces: list[Interface] = []
        self._build()

    # -- errors -----------------------------------------------------------
    def _error(self, path: tuple[Any, ...], message: str) -> TopologyError:
        line = _line_for(self._lines, path)
        where = f"{self.source}:{line}" if line else self.source
        field = ".".join(str(p) for p in path)
        return TopologyError(f"{where}: {field}: {message}", path)

    # -- working it out -------------------------------------------------
    def _place(self) -> None:
        """Nodes on remote hosts: checked URIs, and the libvirt provider (the one that runs
        machines there; a node that names another provider is refused)."""
        from vboxlab.providers.remote_host import RemoteTarget, is_remote

        uris: dict[str, str | None] = {}
        for host, uri in self.spec.hosts.items():
            if uri == "local":
                uris[host] = None
                continue
            if not is_remote(uri):
                raise self._error(("hosts", host), f"{uri!r} is neither 'local' nor a "
                                  "qemu+ssh://USER@HOST[:PORT]/system URI")
            try:
                RemoteTarget.parse(uri)
            except ConfigError as exc:
                raise self._error(("hosts", host), str(exc)) from None
            uris[host] = uri
        for name, spec in self.spec.nodes.items():
            if spec is None or spec.host is None:
                continue
            if spec.host not in uris:
                raise self._error(("nodes", name, "host"),
                                  f"{spec.host!r} is not in hosts: "
                                  f"{', '.join(uris) or 'none are declared'}")
            placed = uris[spec.host]
            node = self.nodes[name] = dataclasses.replace(self.nodes[name], host=spec.host)
            if placed is None:
                continue
            if spec.provider not in (None, "libvirt"):
                raise self._error(("nodes", name, "provider"),
                                  f"{spec.provider} cannot run on remote host {spec.host}; "
                                  "only libvirt runs machines there (leave provider out)")
            self.nodes[name] = dataclasses.replace(node, provider="libvirt", host_uri=placed)

    def placed(self, where: dict[str, tuple[str, str | None]]) -> Topology:
        """A copy with nodes put on hosts: node -> (host name, its URI or None for this
        machine); a node on a remote host runs on libvirt there."""
        copy = object.__new__(Topology)
        copy.__dict__.update(self.__dict__)
        copy.nodes = dict(self.nodes)
        for name, (host, uri) in where.items():
            node = copy.nodes[name]
            copy.nodes[name] = dataclasses.replace(
                node, host=host, host_uri=uri,
                provider="libvirt" if uri is not None else node.provider)
        return copy

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
                if not isinstance(end, str) or (end not in spec.nodes and
                                                end not in spec.segments):
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

        for index, link in enumerate(self.spec.links):
            a, b = link.between
            if a in parent and b in parent:
                ra, rb = find(a), find(b)
                if ra == rb and a != b:
                    raise self._error(("links", index, "between"),
                                      f"the trunk {a} <-> {b} closes a loop: the two segments "
                                      "are already joined through other trunks, and a "
                                      "broadcast would circle for ever; remove one trunk of "
                                      "the loop")
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
    def providers(self) -> dict[tuple[str, str | None], list[str]]:
        """(provider name, remote host URI or None) -> the nodes it runs (ask each provider's
        ``preflight`` about them)."""
        found: dict[tuple[str, str | None], list[str]] = {}
        for node in self.nodes.values():
            found.setdefault((node.provider, node.host_uri), []).append(node.name)
        return found

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

    # -- building ---------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], name: str = "topology",
                  source: str = "<python>",
                  lines: dict[tuple[Any, ...], int] | None = None) -> Topology:
        """Validate a topology given as Python data (the YAML's structure)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: a topology is a mapping with nodes, segments and "
                              f"links, not {type(data).__name__}")
        try:
            spec = TopologyFile.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            path = tuple(p for p in err["loc"] if p != "properties")  # our grouping, not theirs
            line = _line_for(lines or {}, path)
            where = f"{source}:{line}" if line else source
            raise TopologyError(f"{where}: {'.'.join(str(p) for p in path) or '(top)'}: "
                                f"{err['msg']} (got {err.get('input')!r})", path) from None
        return cls(spec, name, source, lines)


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes; a topology file is at "
                              f"most {MAX_FILE_BYTES} bytes")
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such topology file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as text: {exc}") from None
    return parse_topology(text, str(path), path.stem)


def parse_topology(text: str, source: str = "<text>", name: str = "topology") -> Topology:
    """Validate a topology given as YAML text (what :func:`load_topology` reads from a file)."""
    if len(text.encode()) > MAX_FILE_BYTES:
        raise ConfigError(f"{source}: over {MAX_FILE_BYTES} bytes; a topology is at most that")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark is not None else 1
                raise ConfigError(f"{source}:{line}: YAML aliases (*name) are not "
                                  "allowed in topology files; write the value out")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to be a topology") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: a topology is a mapping with nodes, segments and links")
    lines: dict[tuple[Any, ...], int] = {}
    _collect_lines(node, (), lines)
    return Topology.from_dict(data, name, source, lines)


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


def describe_impairment(imp: Impairment) -> str:
    """One direction's properties in the model's units, such as ``delay 10ms, loss 1%``."""
    parts = []
    if imp.delay:
        parts.append(f"delay {imp.delay * 1000:g}ms")
    if imp.jitter:
        parts.append(f"jitter {imp.jitter * 1000:g}ms" + (" (reordering)" if imp.reorder
                                                           else ""))
    if imp.loss:
        parts.append(f"loss {imp.loss * 100:g}%")
    if imp.loss_model is not None:
        model = imp.loss_model
        parts.append(f"loss_model p={model.p:g} r={model.r:g} h={model.h:g} k={model.k:g}")
    if imp.rate:
        parts.append(f"rate {imp.rate / 1e6:g}mbit")
    if imp.queue:
        parts.append(f"queue {imp.queue}b")
    if imp.duplicate:
        parts.append(f"duplicate {imp.duplicate * 100:g}%")
    if imp.corrupt:
        parts.append(f"corrupt {imp.corrupt * 100:g}%")
    if imp.mtu != 1500:
        parts.append(f"mtu {imp.mtu}")
    if not imp.up:
        parts.append("down")
    return ", ".join(parts) or "clean"
