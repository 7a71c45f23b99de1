"""Flows of a lab's traffic, read from its link captures, with assertions that read well.

A flow is one conversation: TCP or UDP by its two ends (address and port),
ICMP by its two addresses. Its client is the side that sent the TCP SYN (or,
without one, the side on an ephemeral port talking to a well-known or lower
one, or else the side that spoke first). For each
flow: packets and bytes each way, first and last seen, TCP flags seen, and the
application protocol guessed from its first bytes (``SSH-``, ``GET /``, a TLS
handshake...) or else from the server port. The first bytes each way are kept
(up to :data:`KEPT_BYTES`) to guess the protocol and to spot cleartext
credentials (:mod:`vboxlab.net.credentials`)::

    flows = network.flows()
    assert flows.between("client1", "server").ports == {80}
    assert not flows.to_outside()
    assert not flows.cleartext_credentials()
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vboxlab.errors import ConfigError
from vboxlab.net import pcaps
from vboxlab.net.credentials import Credential, find_credentials

#: payload bytes kept per flow direction (for protocol guesses and credentials)
KEPT_BYTES = 8192

#: where Linux and most systems start their ephemeral (client) ports
EPHEMERAL = 32768

TCP_FLAG_NAMES = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")

#: well-known server ports, for flows whose first bytes say nothing
PORT_APPS = {
    20: "ftp-data", 21: "ftp", 22: "ssh", 23: "telnet", 25: "smtp", 53: "dns", 67: "dhcp",
    68: "dhcp", 69: "tftp", 80: "http", 110: "pop3", 123: "ntp", 143: "imap", 161: "snmp",
    389: "ldap", 443: "tls", 445: "smb", 514: "syslog", 546: "dhcpv6", 547: "dhcpv6",
    587: "smtp", 993: "tls", 995: "tls", 1883: "mqtt", 3306: "mysql", 5201: "iperf3",
    5353: "mdns", 5432: "postgresql", 6379: "redis", 8080: "http", 8443: "tls",
}
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                b"CONNECT ", b"TRACE ")


def guess_app(to_server: bytes, to_client: bytes, protocol: str, server_port: int) -> str | None:
    """The application protocol: first bytes first, the server port otherwise."""
    if to_server.startswith(b"SSH-") or to_client.startswith(b"SSH-"):
        return "ssh"
    if to_server.startswith(HTTP_METHODS) or to_client.startswith(b"HTTP/"):
        return "http"
    if len(to_server) >= 3 and to_server[0] == 0x16 and to_server[1] == 0x03:
        return "tls"
    if to_client.startswith(b"220"):
        head = to_client[:200].upper()
        if b"FTP" in head:
            return "ftp"
        if b"SMTP" in head:
            return "smtp"
    if to_client.startswith(b"+OK"):
        return "pop3"
    if to_client.startswith(b"* OK"):
        return "imap"
    if protocol == "tcp" and (to_server[:1] == b"\xff" or to_client[:1] == b"\xff"):
        return "telnet"  # IAC: option negotiation opens a telnet session
    if protocol == "udp" or (protocol == "tcp" and (to_server or to_client)):
        return PORT_APPS.get(server_port)  # not for a bare probe: a scan is not a service
    return None


@dataclass
class Flow:
    """One conversation seen on the lab's links."""

    protocol: str
    client: str
    client_port: int
    server: str
    server_port: int
    packets_to_server: int = 0
    bytes_to_server: int = 0
    packets_to_client: int = 0
    bytes_to_client: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    tcp_flags: frozenset[str] = frozenset()
    app: str | None = None
    #: the links it crossed (``a<->b``)
    links: tuple[str, ...] = ()
    #: the first payload bytes each way (up to KEPT_BYTES), in sequence order
    head_to_server: bytes = field(default=b"", repr=False)
    head_to_client: bytes = field(default=b"", repr=False)
    #: node names of the two ends, where they are lab nodes
    client_node: str | None = None
    server_node: str | None = None

    @property
    def packets(self) -> int:
        return self.packets_to_server + self.packets_to_client

    @property
    def bytes(self) -> int:
        return self.bytes_to_server + self.bytes_to_client

    def end(self, side: str) -> str:
        """``client`` or ``server`` as text: node name (or address) and port."""
        name = getattr(self, f"{side}_node") or getattr(self, side)
        if self.protocol not in ("tcp", "udp"):
            return str(name)
        if ":" in name:  # an IPv6 address
            name = f"[{name}]"
        return f"{name}:{getattr(self, f'{side}_port')}"

    def describe(self) -> str:
        ends = f"{self.end('client')} -> {self.end('server')}"
        app = f" {self.app}" if self.app else ""
        return (f"{self.protocol}{app} {ends}: {self.packets_to_server}/{self.packets_to_client}"
                f" packets, {self.bytes_to_server}/{self.bytes_to_client} bytes")

    def to_dict(self) -> dict[str, Any]:
        return {"protocol": self.protocol, "client": self.client, "client_port": self.client_port,
                "server": self.server, "server_port": self.server_port,
                "client_node": self.client_node, "server_node": self.server_node,
                "app": self.app, "packets_to_server": self.packets_to_server,
                "bytes_to_server": self.bytes_to_server,
                "packets_to_client": self.packets_to_client,
                "bytes_to_client": self.bytes_to_client, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "tcp_flags": sorted(self.tcp_flags),
                "links": list(self.links)}


class _Building:
    """A flow while its packets are read (raw addresses, payload pieces)."""

    __slots__ = ("client", "client_known", "counts", "cport", "first", "flags", "heads", "kept",
                 "last", "protocol", "server", "sport")

    def __init__(self, packet: pcaps.Packet, client_is_source: bool, known: bool) -> None:
        self.protocol = packet.protocol
        if client_is_source:
            self.client, self.cport = packet.source, packet.sport
            self.server, self.sport = packet.target, packet.dport
        else:
            self.client, self.cport = packet.target, packet.dport
            self.server, self.sport = packet.source, packet.sport
        self.counts = [0, 0, 0, 0]  # packets, bytes to server; packets, bytes to client
        self.first = self.last = packet.time
        self.flags = 0
        self.heads: tuple[dict[int, bytes], dict[int, bytes]] = ({}, {})
        self.kept = [0, 0]
        self.client_known = known  # the client was told by a SYN or by ports


def _client_is_source(packet: pcaps.Packet) -> tuple[bool, bool]:
    """Whether the packet's sender is the flow's client, and whether that is certain."""
    if packet.protocol == pcaps.TCP:
        syn, ack = packet.flags & 0x02, packet.flags & 0x10
        if syn:
            return not ack, True
    if packet.protocol in (pcaps.TCP, pcaps.UDP):
        low = min(packet.sport, packet.dport)
        if low < 1024 or max(packet.sport, packet.dport) >= EPHEMERAL > low:
            # a well-known port, or an ephemeral one talking to a lower one: the server is low
            return packet.dport == low, packet.protocol == pcaps.UDP
    return True, False


def _key(packet: pcaps.Packet) -> tuple[int, bytes, int, bytes, int]:
    if packet.protocol in (pcaps.TCP, pcaps.UDP):
        one, two = (packet.source, packet.sport), (packet.target, packet.dport)
    else:  # ICMP and the rest: by addresses
        one, two = (packet.source, 0), (packet.target, 0)
    if one > two:
        one, two = two, one
    return packet.protocol, one[0], one[1], two[0], two[1]


def read_flows(files: Iterable[Path]) -> dict[tuple[int, bytes, int, bytes, int], _Building]:
    """Flows of one link's capture files (both directions of it)."""
    table: dict[tuple[int, bytes, int, bytes, int], _Building] = {}
    for packet in pcaps.packets(files):
        key = _key(packet)
        flow = table.get(key)
        if flow is None:
            client_is_source, known = _client_is_source(packet)
            flow = table[key] = _Building(packet, client_is_source, known)
        elif (not flow.client_known and packet.protocol == pcaps.TCP and packet.flags & 0x02
              and not packet.flags & 0x10):  # a SYN after all: its sender is the client
            if packet.source != flow.client or packet.sport != flow.cport:
                flow.client, flow.server = flow.server, flow.client
                flow.cport, flow.sport = flow.sport, flow.cport
                flow.counts = flow.counts[2:] + flow.counts[:2]
                flow.heads = (flow.heads[1], flow.heads[0])
                flow.kept = flow.kept[::-1]
            flow.client_known = True
        way = 0 if (packet.source == flow.client and
                    (packet.sport == flow.cport or packet.protocol not in
                     (pcaps.TCP, pcaps.UDP))) else 1
        counts = flow.counts
        counts[2 * way] += 1
        counts[2 * way + 1] += packet.length
        if packet.time < flow.first:
            flow.first = packet.time
        if packet.time > flow.last:
            flow.last = packet.time
        flow.flags |= packet.flags
        if packet.payload and flow.kept[way] < KEPT_BYTES:
            heads = flow.heads[way]
            position = packet.seq if packet.protocol == pcaps.TCP else len(heads)
            if position not in heads:
                heads[position] = packet.payload
                flow.kept[way] += len(packet.payload)
    return table


def _ordered(pieces: dict[int, bytes], tcp: bool) -> bytes:
    if not pieces:
        return b""
    if tcp:
        first = min(pieces)
        order = sorted(pieces, key=lambda seq: (seq - first) % 2**32)
    else:
        order = sorted(pieces)
    return b"".join(pieces[p] for p in order)[:KEPT_BYTES]


def _flag_names(bits: int) -> frozenset[str]:
    return frozenset(name for index, name in enumerate(TCP_FLAG_NAMES) if bits & (1 << index))


class Flows:
    """The flows of some links, with queries that read as assertions."""

    def __init__(self, flows: Iterable[Flow], nodes: Mapping[str, str] | None = None,
                 subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
                 *, sources: Iterable[Path] = ()) -> None:
        self.flows = sorted(flows, key=lambda f: (f.first_seen, f.protocol, f.client,
                                                  f.client_port))
        #: address -> node name
        self.nodes = dict(nodes or {})
        self.subnets = list(subnets)
        #: the capture files read
        self.sources = list(sources)

    def _derived(self, flows: Iterable[Flow]) -> Flows:
        return Flows(flows, self.nodes, self.subnets, sources=self.sources)

    def __iter__(self) -> Iterator[Flow]:
        return iter(self.flows)

    def __len__(self) -> int:
        return len(self.flows)

    def __bool__(self) -> bool:
        return bool(self.flows)

    def __getitem__(self, index: int) -> Flow:
        return self.flows[index]

    def __repr__(self) -> str:
        if not self.flows:
            return "<Flows: none>"
        shown = "\n  ".join(f.describe() for f in self.flows[:20])
        more = f"\n  ... and {len(self.flows) - 20} more" if len(self.flows) > 20 else ""
        return f"<Flows: {len(self.flows)}\n  {shown}{more}>"

    __str__ = __repr__

    def _addresses_of(self, who: str) -> set[str]:
        """The addresses a node name (or an address) stands for."""
        found = {address for address, node in self.nodes.items() if node == who}
        if found:
            return found
        try:
            return {str(ipaddress.ip_address(who))}
        except ValueError:
            known = sorted(set(self.nodes.values()))
            raise ConfigError(f"{who!r} is neither a node of this network nor an IP address; "
                              f"nodes: {', '.join(known) or 'none known'}") from None

    def between(self, a: str, b: str) -> Flows:
        """Flows with one end at ``a`` and the other at ``b`` (node names or addresses)."""
        one, two = self._addresses_of(a), self._addresses_of(b)
        return self._derived(f for f in self.flows
                             if (f.client in one and f.server in two) or
                             (f.client in two and f.server in one))

    def involving(self, who: str) -> Flows:
        """Flows with either end at ``who``."""
        mine = self._addresses_of(who)
        return self._derived(f for f in self.flows if f.client in mine or f.server in mine)

    def protocol(self, name: str) -> Flows:
        """Flows of one transport (``tcp``, ``udp``, ``icmp``) or application (``http``)."""
        return self._derived(f for f in self.flows if name in (f.protocol, f.app))

    def to_port(self, port: int) -> Flows:
        return self._derived(f for f in self.flows if f.server_port == port
                             and f.protocol in ("tcp", "udp"))

    @property
    def ports(self) -> set[int]:
        """Server ports of the TCP and UDP flows."""
        return {f.server_port for f in self.flows if f.protocol in ("tcp", "udp")}

    @property
    def apps(self) -> set[str]:
        return {f.app for f in self.flows if f.app}

    def _outside(self, address: str) -> bool:
        ip = ipaddress.ip_address(address)
        if (ip.is_multicast or ip.is_link_local or ip.is_unspecified or ip.is_loopback
                or address == "255.255.255.255" or address in self.nodes):
            return False
        return not any(ip in subnet for subnet in self.subnets)

    def to_outside(self) -> Flows:
        """Flows with an end outside the lab: not a node, not in a segment's subnet.

        Multicast, broadcast, link-local and unspecified addresses count as inside.
        """
        return self._derived(f for f in self.flows
                             if self._outside(f.client) or self._outside(f.server))

    def cleartext_credentials(self) -> list[Credential]:
        """Credentials sent in clear: HTTP basic auth and forms, FTP/POP3/IMAP/SMTP, Telnet."""
        return [found for flow in self.flows for found in find_credentials(flow)]

    def to_json(self) -> str:
        return json.dumps([f.to_dict() for f in self.flows], indent=2)

    def table(self) -> list[list[str]]:
        """Rows for a report: protocol, app, client, server, packets and bytes each way."""
        return [[f.protocol, f.app or "", f.end("client"), f.end("server"),
                 f"{f.packets_to_server}/{f.packets_to_client}",
                 f"{f.bytes_to_server}/{f.bytes_to_client}", ", ".join(f.links)]
                for f in self.flows]


def finish(table: Mapping[tuple[int, bytes, int, bytes, int], _Building], link: str,
           nodes: Mapping[str, str]) -> dict[tuple[Any, ...], Flow]:
    """Flows of one link, keyed for merging with other links."""
    done: dict[tuple[Any, ...], Flow] = {}
    for key, b in table.items():
        protocol = pcaps.protocol_name(b.protocol)
        tcp = b.protocol == pcaps.TCP
        head_out, head_back = _ordered(b.heads[0], tcp), _ordered(b.heads[1], tcp)
        client, server = pcaps.address_text(b.client), pcaps.address_text(b.server)
        ports = (b.cport, b.sport) if protocol in ("tcp", "udp") else (0, 0)
        done[key] = Flow(
            protocol, client, ports[0], server, ports[1], packets_to_server=b.counts[0],
            bytes_to_server=b.counts[1], packets_to_client=b.counts[2],
            bytes_to_client=b.counts[3], first_seen=b.first,
            last_seen=b.last, tcp_flags=_flag_names(b.flags),
            app=guess_app(head_out, head_back, protocol, ports[1]), links=(link,),
            head_to_server=head_out, head_to_client=head_back, client_node=nodes.get(client),
            server_node=nodes.get(server))
    return done


def merge(per_link: Iterable[dict[tuple[Any, ...], Flow]]) -> list[Flow]:
    """One flow per conversation across links: counts as seen on the link that saw most."""
    merged: dict[tuple[Any, ...], Flow] = {}
    for flows in per_link:
        for key, flow in flows.items():
            seen = merged.get(key)
            if seen is None:
                merged[key] = flow
                continue
            if flow.packets > seen.packets:
                flow.links = seen.links + flow.links
                flow.first_seen = min(flow.first_seen, seen.first_seen)
                flow.last_seen = max(flow.last_seen, seen.last_seen)
                flow.tcp_flags |= seen.tcp_flags
                merged[key] = flow
            else:
                seen.links += flow.links
                seen.first_seen = min(flow.first_seen, seen.first_seen)
                seen.last_seen = max(flow.last_seen, seen.last_seen)
                seen.tcp_flags |= flow.tcp_flags
    return list(merged.values())


def flows_of_links(links: Mapping[str, Sequence[Path]],
                   nodes: Mapping[str, str] | None = None,
                   subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = ()) -> Flows:
    """Flows of several links' capture files (link name -> files), one per conversation."""
    known = dict(nodes or {})
    return Flows(merge(finish(read_flows(files), name, known) for name, files in links.items()),
                 known, subnets, sources=[f for files in links.values() for f in files])


def flows_of_files(files: Iterable[Path], *, link: str = "capture",
                   nodes: Mapping[str, str] | None = None) -> Flows:
    """Flows of capture files taken together as one link (benchmarks, tests)."""
    return flows_of_links({link: list(files)}, nodes)


@dataclass(frozen=True)
class Rate:
    """Traffic of one link direction during one interval."""

    start: float
    packets: int
    bytes: int
    seconds: float

    @property
    def bits_per_second(self) -> float:
        return self.bytes * 8 / self.seconds


def rates(files: Iterable[Path], interval: float = 1.0) -> list[Rate]:
    """Packets and bytes per ``interval`` seconds in capture files (one direction)."""
    if interval <= 0:
        raise ConfigError(f"rate interval {interval}: give a positive number of seconds")
    buckets: dict[int, list[int]] = {}
    for path in files:
        for stamp, frame in pcaps.frames(path):
            bucket = buckets.setdefault(int(stamp // interval), [0, 0])
            bucket[0] += 1
            bucket[1] += len(frame)
    if not buckets:
        return []
    first, last = min(buckets), max(buckets)
    empty = [0, 0]
    return [Rate(index * interval, buckets.get(index, empty)[0], buckets.get(index, empty)[1],
                 interval) for index in range(first, last + 1)]
