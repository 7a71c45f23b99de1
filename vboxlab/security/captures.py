"""YARA over what crossed the lab's links: payloads of captured TCP streams and UDP flows.

Pcaps are read and their headers taken apart by :mod:`vboxlab.net.pcaps`; TCP
segments are put in sequence order per direction, and each stream's bytes are
matched as one buffer, so a rule matches across segments.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from vboxlab.errors import ConfigError
from vboxlab.net import pcaps
from vboxlab.security.malware import MalwareReport, YaraEngine

MAX_STREAM_BYTES = 64 * 1024 * 1024
Flow = tuple[str, str, int, str, int]  # protocol, source, source port, destination, port


def flows(pcap: Path) -> dict[Flow, bytes]:
    """The payload bytes of every TCP stream direction and UDP flow in ``pcap``."""
    segments: dict[Flow, dict[int, bytes]] = {}
    datagrams: dict[Flow, list[bytes]] = {}
    for packet in pcaps.packets([pcap]):
        if not packet.payload or packet.protocol not in (pcaps.TCP, pcaps.UDP):
            continue
        key = (pcaps.protocol_name(packet.protocol), pcaps.address_text(packet.source),
               packet.sport, pcaps.address_text(packet.target), packet.dport)
        if packet.protocol == pcaps.TCP:
            segments.setdefault(key, {}).setdefault(packet.seq, packet.payload)
        else:
            datagrams.setdefault(key, []).append(packet.payload)
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
