"""Traffic monitoring and intrusion detection against the tools a user would run by hand.

    python benchmarks/netsec.py --runs 5 --output benchmarks/results/netsec.json

On one synthetic 100k-packet capture of a link, written the way the fabric writes
one (a pcap per direction): 2,000 TCP conversations (handshake, 44 data segments
of HTTP-like payload with a canary request among them, FIN each way), plus UDP.
Each figure is the median of ``--runs`` interleaved repetitions:

* flows: ``network.flows()``'s reader (both direction files, packets/s) against
  ``tshark -q -z conv,tcp`` on the merged file; target >= 1x tshark's speed.
* ids: ``inspect_files`` (mergecap + Suricata with vboxlab's configuration) against
  ``mergecap`` + ``suricata -r merged.pcap -k none -S rules`` by hand with Debian's
  /etc/suricata/suricata.yaml; target <= 1.2x. Both must raise the canary alert.
* report: writing the lab report of a 50-test run (index.html, report.json and
  lab-manifest.json; each test with a machine, a 40-line console tail, the star
  topology drawn, its links, 30 flows, and an alert and failure text on every 7th);
  target <= 2 s.

Needs tshark, mergecap and Suricata 7 (``make deps``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boot import emit, summary

from vboxlab.net import load_topology
from vboxlab.net.flows import flows_of_files
from vboxlab.report.html import RunReport, write_report
from vboxlab.report.manifest import new_manifest
from vboxlab.report.records import LinkRecord, MachineRecord, NetworkRecord, TestRecord
from vboxlab.report.topology_svg import render_topology_svg
from vboxlab.security.ids import Suricata, inspect_files

ROOT = Path(__file__).resolve().parent.parent

PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
CLIENT_MAC, SERVER_MAC = bytes.fromhex("525400000001"), bytes.fromhex("525400000002")


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp_frame(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int,
              payload: bytes) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(header) + len(payload))
    header = header[:16] + struct.pack("!H", checksum(pseudo + header + payload)) + header[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(header) + len(payload), 0, 0x4000, 64,
                     6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    macs = SERVER_MAC + CLIENT_MAC if src[-1] == 1 else CLIENT_MAC + SERVER_MAC
    return macs + b"\x08\x00" + ip + header + payload


def write_captures(folder: Path, conversations: int = 2000) -> tuple[Path, Path, int]:
    """client-to-lan.pcap and lan-to-client.pcap; the number of packets in both."""
    out = [bytearray(PCAP_HEADER), bytearray(PCAP_HEADER)]
    count = 0
    clock = 1_800_000_000.0
    client, server = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])

    def add(way: int, frame: bytes) -> None:
        nonlocal clock, count
        clock += 0.0001
        seconds = int(clock)
        out[way] += struct.pack("<IIII", seconds, int((clock - seconds) * 1e6), len(frame),
                                len(frame)) + frame
        count += 1

    for n in range(conversations):
        sport, cseq, sseq = 20000 + n, 1000, 90000
        add(0, tcp_frame(client, server, sport, 80, cseq, 0, 0x02, b""))
        add(1, tcp_frame(server, client, 80, sport, sseq, cseq + 1, 0x12, b""))
        cseq, sseq = cseq + 1, sseq + 1
        add(0, tcp_frame(client, server, sport, 80, cseq, sseq, 0x10, b""))
        path = "/vboxlab-canary" if n == conversations // 2 else f"/page/{n}"
        request = f"GET {path} HTTP/1.1\r\nHost: server\r\n\r\n".encode()
        add(0, tcp_frame(client, server, sport, 80, cseq, sseq, 0x18, request))
        cseq += len(request)
        body = b"HTTP/1.1 200 OK\r\nContent-Length: 41800\r\n\r\n"
        for part in range(21):
            chunk = (body if part == 0 else b"") + bytes(1400 - (len(body) if part == 0 else 0))
            add(1, tcp_frame(server, client, 80, sport, sseq, cseq, 0x10, chunk))
            sseq += len(chunk)
            add(0, tcp_frame(client, server, sport, 80, cseq, sseq, 0x10, b""))
        add(0, tcp_frame(client, server, sport, 80, cseq, sseq, 0x11, b""))
        add(1, tcp_frame(server, client, 80, sport, sseq, cseq + 1, 0x11, b""))
        add(0, tcp_frame(client, server, sport, 80, cseq + 1, sseq + 1, 0x10, b""))
    paths = (folder / "client-to-lan.pcap", folder / "lan-to-client.pcap")
    for path, data in zip(paths, out, strict=True):
        path.write_bytes(bytes(data))
    return paths[0], paths[1], count


def fifty_tests(flows: list[dict[str, object]]) -> list[TestRecord]:
    topology = load_topology(ROOT / "topologies" / "star.yaml")
    svg = render_topology_svg(topology)
    console = "\n".join(f"[ {i:5}.000000] console line {i} of a booting guest" for i in range(40))
    records = []
    for n in range(50):
        failed = n % 7 == 0
        records.append(TestRecord(
            f"tests/test_lab.py::test_case_{n}", "failed" if failed else "passed", 2.5,
            phase="call" if failed else None,
            message="AssertionError: something went wrong\n" * 20 if failed else "",
            machines=[MachineRecord(name, "qemu", "tiny", "1.0.0", "ab" * 32, console)
                      for name in ("server", "client1", "client2")],
            network=NetworkRecord("star", "topologies/star.yaml", n, svg, [
                LinkRecord(f"{name}<->lan", "clean", "clean",
                           {"a_to_b": {"tx_packets": 100}, "b_to_a": {"tx_packets": 90}})
                for name in ("server", "client1", "client2")], flows, len(flows)),
            alerts=[{"sid": 1000003, "signature": "VBOXLAB canary URI requested",
                     "source": "10.0.0.1", "source_port": 40000, "target": "10.0.0.2",
                     "target_port": 80, "links": ["client1<->lan"]}] if failed else []))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    tshark, mergecap, suricata = (shutil.which(t) for t in ("tshark", "mergecap", "suricata"))
    if not (tshark and mergecap and suricata):
        sys.exit("needs tshark, mergecap and suricata (make deps)")
    with tempfile.TemporaryDirectory(prefix="netsec-bench-") as scratch:
        folder = Path(scratch)
        outgoing, incoming, packets = write_captures(folder)
        merged = folder / "merged.pcap"
        subprocess.run([mergecap, "-F", "pcap", "-w", str(merged), str(outgoing),
                        str(incoming)], check=True)
        engine = Suricata()
        rules = folder / "rules.rules"
        rules.write_text("\n".join(p.read_text() for p in engine.rules))
        flow_times, tshark_times, ours_ids, hand_ids = [], [], [], []
        flows = alerts = None
        for run in range(args.runs):
            started = time.perf_counter()
            flows = flows_of_files([outgoing, incoming])
            flow_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            subprocess.run([tshark, "-r", str(merged), "-q", "-z", "conv,tcp"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            tshark_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            alerts = inspect_files([outgoing, incoming], engine, folder / f"ours{run}")
            ours_ids.append(time.perf_counter() - started)
            hand = folder / f"hand{run}"
            hand.mkdir()
            started = time.perf_counter()
            subprocess.run([mergecap, "-F", "pcap", "-w", str(hand / "merged.pcap"),
                            str(outgoing), str(incoming)], check=True)
            subprocess.run([suricata, "-r", str(hand / "merged.pcap"), "-k", "none", "-S",
                            str(rules), "-l", str(hand)], check=True, capture_output=True)
            hand_ids.append(time.perf_counter() - started)
            hand_alerts = (hand / "eve.json").read_text().count('"signature_id":1000003')
            assert hand_alerts >= 1, "Suricata by hand raised no canary alert"
        assert flows is not None and alerts is not None
        assert len(flows) == 2000, len(flows)
        assert alerts.sids == {1000003}, alerts.summary()
        sample = [f.to_dict() for f in list(flows)[:30]]
        report_times = []
        for run in range(args.runs):
            started = time.perf_counter()
            write_report(folder / f"report{run}", RunReport(new_manifest([], ROOT),
                                                             fifty_tests(sample)))
            report_times.append(time.perf_counter() - started)
        page = (folder / "report0" / "index.html").stat().st_size
        ours_rate = [packets / t for t in flow_times]
        tshark_rate = [packets / t for t in tshark_times]
        result: dict[str, object] = {
            "benchmark": "netsec", "runs": args.runs, "packets": packets,
            "flows": {
                "ours_packets_per_s": summary(ours_rate, 0),
                "tshark_conv_tcp_packets_per_s": summary(tshark_rate, 0),
                "speed_vs_tshark": round(statistics.median(ours_rate) /
                                         statistics.median(tshark_rate), 3),
                "target": ">= 1.0"},
            "ids": {
                "ours_s": summary(ours_ids), "by_hand_s": summary(hand_ids),
                "ratio": round(statistics.median(ours_ids) / statistics.median(hand_ids), 3),
                "target": "<= 1.2"},
            "report_50_tests": {"seconds": summary(report_times), "page_bytes": page,
                                "target": "<= 2 s"},
        }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
