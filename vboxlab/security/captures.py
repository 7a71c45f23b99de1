"""YARA over what crossed the lab's links: payloads of captured TCP streams and UDP flows.

Pcaps are read with scapy's raw reader (pcap or pcapng, any byte order); the
Ethernet, IPv4/IPv6, TCP and UDP headers are taken apart with ``struct`` (fast:
no full dissection), TCP segments are put in sequence order per direction, and
each stream's bytes are matched as one buffer, so a rule matches across segments.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from vboxlab.errors import ConfigError
from vboxlab.security.malware import MalwareReport, YaraEngine

MAX_STREAM_BYTES = 64 * 1024 * 1024
PCAP_MAGICS = {bytes.fromhex(m) for m in ("a1b2c3d4", "d4c3b2a1", "a1b23c4d", "4d3cb2a1",
                                            "0a0d0d0a")}
Flow = tuple[str, str, int, str, int]  # protocol, source, source port, destination, port


def _ip_payload(frame: bytes) -> tuple[str, str, int, bytes] | None:
    """(source, destination, protocol, payload) of an Ethernet frame carrying IP."""
    offset, ethertype = 14, struct.unpack_from("!H", frame, 12)[0] if len(frame) >= 14 else 0
    while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:  # VLAN tags
        ethertype = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    if ethertype == 0x0800 and len(frame) >= offset + 20:
        header = (frame[offset] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, offset + 2)[0]
        source = str(ipaddress.IPv4Address(frame[offset + 12:offset + 16]))
        target = str(ipaddress.IPv4Address(frame[offset + 16:offset + 20]))
        return source, target, frame[offset + 9], frame[offset + header:offset + total]
    if ethertype == 0x86DD and len(frame) >= offset + 40:
        length = struct.unpack_from("!H", frame, offset + 4)[0]
        source = str(ipaddress.IPv6Address(frame[offset + 8:offset + 24]))
        target = str(ipaddress.IPv6Address(frame[offset + 24:offset + 40]))
        return source, target, frame[offset + 6], frame[offset + 40:offset + 40 + length]
    return None


def flows(pcap: Path) -> dict[Flow, bytes]:
    """The payload bytes of every TCP stream direction and UDP flow in ``pcap``."""
    from scapy.error import Scapy_Exception
    from scapy.utils import RawPcapReader

    segments: dict[Flow, dict[int, bytes]] = {}
    datagrams: dict[Flow, list[bytes]] = {}
    with pcap.open("rb") as handle:
        magic = handle.read(4)
    if magic not in PCAP_MAGICS:
        raise ConfigError(f"capture {pcap}: not a pcap or pcapng file (starts with {magic!r})")
    try:
        reader = RawPcapReader(str(pcap))
    except (Scapy_Exception, OSError) as exc:
        raise ConfigError(f"capture {pcap}: not a pcap or pcapng file ({exc})") from None
    with reader:
        for frame, _ in reader:
            parsed = _ip_payload(bytes(frame))
            if parsed is None:
                continue
            source, target, protocol, payload = parsed
            if protocol == 6 and len(payload) >= 20:
                sport, dport, seq = struct.unpack_from("!HHI", payload)
                data = payload[(payload[12] >> 4) * 4:]
                if data:
                    segments.setdefault(("tcp", source, sport, target, dport), {}).setdefault(
                        seq, data)
            elif protocol == 17 and len(payload) >= 8:
                sport, dport = struct.unpack_from("!HH", payload)
                datagrams.setdefault(("udp", source, sport, target, dport), []).append(
                    payload[8:])
    found = {flow: _in_order(parts) for flow, parts in segments.items()}
    found.update({flow: b"".join(parts)[:MAX_STREAM_BYTES] for flow, parts in datagrams.items()})
    return found


def _in_order(parts: dict[int, bytes]) -> bytes:
    """TCP segments by sequence number (wrapping), retransmissions once."""
    first = min(parts)
    ordered = sorted(parts, key=lambda seq: (seq - first) % 2**32)
    return b"".join(parts[seq] for seq in ordered)[:MAX_STREAM_BYTES]


def describe(flow: Flow) -> str:
    protocol, source, sport, target, dport = flow
    return f"{protocol} {source}:{sport} -> {target}:{dport}"


def pcaps_of(items: Iterable[Path]) -> Iterator[Path]:
    for item in items:
        if item.is_dir():
            yield from sorted(item.glob("*.pcap*"))
        elif item.is_file():
            yield item
        else:
            raise ConfigError(f"capture {item}: no such file or folder")


def scan_captures(paths: Iterable[Path], yara: YaraEngine, *, target: str) -> MalwareReport:
    """Match YARA rules against every stream in the captures."""
    started = time.monotonic()
    files = list(pcaps_of(paths))
    report = MalwareReport(target, [str(p) for p in files], [yara.describe()])
    for pcap in files:
        for flow, data in flows(pcap).items():
            report.scanned += 1
            report.scanned_bytes += len(data)
            report.detections += yara.match(f"{pcap.name}: {describe(flow)}", data)
    report.seconds = time.monotonic() - started
    return report
