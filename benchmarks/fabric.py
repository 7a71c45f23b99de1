"""Fabric fidelity and speed, side by side in one run, JSON out.

    python benchmarks/fabric.py --output reports/bench-fabric.json

Fidelity is measured with UDP sockets standing in for NICs (no VM noise): delay
error (mean, p99) against the configured delay, random loss against its binomial
99 % interval, achieved vs configured rate for 1, 10 and 100 Mbit/s. Speed is
30 MB over HTTP between two tiny guests: a direct QEMU-to-QEMU socket link, the
fabric (``lab.network``) with no impairment, and the fabric with delay + loss. Targets: delay error
<= max(1 ms, 5 %), loss inside the interval, rate within +-10 %, throughput
>= 0.8x direct with no impairment and >= 0.5x with delay + loss.
The same guests also run over vde_switch, and over two vde_switches joined by
wirefilter (clean, and with the same delay + loss), for comparison (Debian vde2).
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit, percentile

from vboxlab.lab import Lab
from vboxlab.net import Topology
from vboxlab.net.fabric import Fabric
from vboxlab.net.plan import mac_for
from vboxlab.net.wire import socket_pair
from vboxlab.providers.base import NicSpec

BROADCAST = b"\xff" * 6
SRC = bytes([0x52, 0x54, 0, 0, 0, 1])


def frame(payload: bytes) -> bytes:
    return BROADCAST + SRC + b"\x88\xb5" + payload


class Bench:
    """A fabric with two socket ports on one segment."""

    def __init__(self, folder: Path) -> None:
        self.pairs = [socket_pair() for _ in range(2)]
        self.fabric = Fabric(folder)
        self.fabric.start()
        for port, (_, far) in enumerate(self.pairs):
            self.fabric.add_port(port, far.fileno(), 0)
        self.fabric.seed(42)
        self.tx, self.rx = self.pairs[0][0], self.pairs[1][0]

    def drain(self) -> None:
        self.rx.settimeout(0.2)
        try:
            while True:
                self.rx.recv(65536)
        except TimeoutError:
            pass

    def close(self) -> None:
        self.fabric.close()
        for near, far in self.pairs:
            near.close()
            far.close()


def one_way_ms(bench: Bench, count: int) -> list[float]:
    bench.rx.settimeout(2)
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        bench.tx.send(frame(b"d" * 64))
        bench.rx.recv(65536)
        samples.append((time.perf_counter() - started) * 1000)
        time.sleep(0.002)
    return samples


def delay_fidelity(bench: Bench) -> dict[str, object]:
    base = statistics.median(one_way_ms(bench, 100))
    results = {}
    for delay_ms in (1, 10, 50):
        bench.fabric.set("p0.in", delay_ns=delay_ms * 1_000_000)
        errors = [abs(s - base - delay_ms) for s in one_way_ms(bench, 200)]
        allowed = max(1.0, 0.05 * delay_ms)
        results[f"{delay_ms}ms"] = {"error_mean_ms": round(statistics.mean(errors), 3),
                                    "error_p99_ms": round(percentile(errors, 0.99), 3),
                                    "allowed_ms": allowed,
                                    "met": percentile(errors, 0.99) <= allowed}
    bench.fabric.set("p0.in", delay_ns=0)
    return {"socket_baseline_ms": round(base, 3), "delays": results}


def loss_fidelity(bench: Bench) -> dict[str, object]:
    results = {}
    sent = 5000
    for loss in (0.01, 0.10, 0.30):
        bench.fabric.set("p0.in", loss=loss)
        for i in range(sent):
            bench.tx.send(frame(struct.pack("!I", i)))
            if i % 200 == 0:
                time.sleep(0.001)
        bench.rx.settimeout(0.5)
        got = 0
        try:
            while True:
                bench.rx.recv(65536)
                got += 1
        except TimeoutError:
            pass
        lost = sent - got
        sd = math.sqrt(sent * loss * (1 - loss))
        low, high = sent * loss - 2.576 * sd, sent * loss + 2.576 * sd
        results[f"{loss:.0%}"] = {"sent": sent, "lost": lost,
                                  "interval_99": [round(low), round(high)],
                                  "met": low <= lost <= high}
    bench.fabric.set("p0.in", loss=0)
    return results


def rate_fidelity(bench: Bench) -> dict[str, object]:
    results = {}
    payload = b"r" * 986  # 1000-byte frames
    for mbit in (1, 10, 100):
        seconds = 1.0
        count = int(mbit * 1e6 * seconds / 8000)
        bench.fabric.set("p0.in", rate_bps=mbit * 1_000_000, queue_bytes=count * 1000 + 1)
        arrivals: list[float] = []

        def receive(expected: int = count, seen: list[float] = arrivals) -> None:
            bench.rx.settimeout(5)
            for _ in range(expected):
                try:
                    bench.rx.recv(65536)
                except TimeoutError:
                    return
                seen.append(time.perf_counter())

        worker = threading.Thread(target=receive)
        worker.start()
        for _ in range(count):
            bench.tx.send(frame(payload))
        worker.join()
        span = arrivals[-1] - arrivals[0]
        achieved = (len(arrivals) - 1) * 8000 / span / 1e6
        results[f"{mbit}mbit"] = {"frames": count, "received": len(arrivals),
                                  "achieved_mbit": round(achieved, 2),
                                  "ratio": round(achieved / mbit, 3),
                                  "met": abs(achieved / mbit - 1) <= 0.10}
        bench.fabric.set("p0.in", rate_bps=0, queue_bytes=0)
        bench.drain()
    return results


def transfer_seconds(client, runs: int, server: str = "10.250.9.2") -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        client.succeed(f"wget -q -O /dev/null http://{server}/blob")
        times.append(round(time.perf_counter() - started, 3))
    return times


SERVE = ("mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob bs=1M count=30 2>/dev/null"
         " && httpd -p 80 -h /tmp/www")
PAIR = {"nodes": {"fl": None, "fr": None}, "links": [{"between": ["fl", "fr"]}]}


def measure_pair(lab: Lab, left_nic, right_nic, runs: int) -> list[float]:
    """Boot two guests on the given NICs, serve 30 MB from the right one, time the transfers."""
    left, right = lab.vm("bl", nics=[left_nic]), lab.vm("br", nics=[right_nic])
    right.succeed(SERVE)
    right.wait_for_port(80)
    try:
        return transfer_seconds(left, runs)
    finally:
        lab.remove_vm("bl")
        lab.remove_vm("br")


def spawn_tool(argv: list[str], log: Path) -> subprocess.Popen:
    """A VDE tool tied to this process; its console reads our pipe (EOF would stop it)."""
    with log.open("ab") as err:
        return subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *argv],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err)


def wait_socket(folder: Path) -> None:
    deadline = time.monotonic() + 10
    while not (folder / "ctl").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"vde_switch did not create {folder}/ctl")
        time.sleep(0.05)


def vde_pairs(lab: Lab, runs: int, delay_ms: float, loss: float) -> dict[str, list[float]]:
    """vde_switch alone, then two switches joined by wirefilter (clean, then impaired)."""
    for tool in ("vde_switch", "wirefilter"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install vde2")
    log = lab.dir / "vde.log"

    def nics(left: Path, right: Path) -> tuple[NicSpec, NicSpec]:
        """The two guests' NICs, plugged into the switches at ``left`` and ``right``."""
        return tuple(NicSpec("eth1", mac_for(lab.id, node, "eth1"), f"10.250.9.{i}/24",
                             vde=str(sock))
                     for i, (node, sock) in enumerate((("bl", left), ("br", right)), 1))
    procs_: list[subprocess.Popen] = []
    try:
        one = lab.dir / "vde1"
        procs_.append(spawn_tool(["vde_switch", "-s", str(one)], log))
        wait_socket(one)
        results = {"vde_switch_s": measure_pair(lab, *nics(one, one), runs)}
        two = lab.dir / "vde2"
        procs_.append(spawn_tool(["vde_switch", "-s", str(two)], log))
        wait_socket(two)
        wire = spawn_tool(["wirefilter", "-N", "-v", f"{one}:{two}"], log)
        procs_.append(wire)
        time.sleep(0.5)
        results["vde_wirefilter_clean_s"] = measure_pair(lab, *nics(one, two), runs)
        procs_.remove(wire)
        wire.kill()
        wire.wait()
        wire = spawn_tool(["wirefilter", "-N", "-v", f"{one}:{two}", "-d", f"{delay_ms:g}",
                           "-l", f"{loss * 100:g}"], log)
        procs_.append(wire)
        time.sleep(0.5)
        results["vde_wirefilter_impaired_s"] = measure_pair(lab, *nics(one, two), runs)
        return results
    finally:
        for proc in procs_:
            proc.kill()
            proc.wait()
            proc.stdin.close()


def vm_throughput(runs: int, delay_ms: float, loss: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vbl-") as folder, Lab(base=Path(folder)) as lab:
        wire = lab.wire("bl", "br", a_address="10.250.9.1/24", b_address="10.250.9.2/24")
        direct = measure_pair(lab, wire.nic("bl"), wire.nic("br"), runs)
        network = lab.network(Topology.from_dict(PAIR))
        network.node("fr").succeed(SERVE)
        network.node("fr").wait_for_port(80)
        clean = transfer_seconds(network.node("fl"), runs, "fr")
        network.link("fl", "fr").set(delay=f"{delay_ms}ms", loss=f"{loss * 100}%")
        impaired = transfer_seconds(network.node("fl"), runs, "fr")
        lab.remove_network()
        vde = vde_pairs(lab, runs, delay_ms, loss)
    best = {"direct": min(direct), "fabric": min(clean), "impaired": min(impaired),
            **{key: min(values) for key, values in vde.items()}}

    def ratio(key: str) -> float:
        return round(best["direct"] / best[key], 2)

    return {
        "bytes": 30 * 1024 * 1024, "runs": runs,
        "direct_s": direct, "fabric_clean_s": clean, "fabric_impaired_s": impaired, **vde,
        "impairment": {"delay_each_way_ms": delay_ms, "loss_each_way": loss},
        "ratio_clean_vs_direct": ratio("fabric"),
        "ratio_impaired_vs_direct": ratio("impaired"),
        "ratio_vde_switch_vs_direct": ratio("vde_switch_s"),
        "ratio_vde_wirefilter_clean_vs_direct": ratio("vde_wirefilter_clean_s"),
        "ratio_vde_wirefilter_impaired_vs_direct": ratio("vde_wirefilter_impaired_s"),
        "met": {"clean": ratio("fabric") >= 0.8, "impaired": ratio("impaired") >= 0.5},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Transfers per VM link")
    parser.add_argument("--delay-ms", type=float, default=1.0, help="Impaired link, each way")
    parser.add_argument("--loss", type=float, default=0.0001, help="Impaired link, each way")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vbl-fab-") as folder:
        bench = Bench(Path(folder))
        try:
            result = {"benchmark": "fabric", "delay": delay_fidelity(bench),
                      "loss": loss_fidelity(bench), "rate": rate_fidelity(bench)}
        finally:
            bench.close()
    result["throughput"] = vm_throughput(args.runs, args.delay_ms, args.loss)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
