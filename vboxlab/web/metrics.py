"""Resource use of the labs and the host, sampled once a second; the last 10 minutes kept.

One sample holds every lab as :func:`vboxlab.control.launcher.status` describes
it (up labs through their supervisors, so link settings and counters are live),
and beside it: each running machine's CPU % and resident memory (from its
process in /proc), the disk its folder takes (overlay and snapshots, every few
seconds), each link direction's packets, bytes and drops per second (from the
fabric counters), and the host's CPU, memory and disk. The dashboard's event
stream sends each sample as it is taken; its charts start from the history.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

from vboxlab.control.launcher import status
from vboxlab.errors import VboxlabError
from vboxlab.procstats import cpu_seconds, resident_bytes

HISTORY_SECONDS = 600
DISK_EVERY = 5.0  # seconds between walks of a machine's folder


def _host_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return float(sum(fields) - idle), float(sum(fields))


def _meminfo() -> dict[str, int]:
    found = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("MemTotal", "MemAvailable"):
            found[key] = int(value.split()[0]) * 1024
    return found


def folder_disk_use(folder: Path) -> int:
    """Bytes a folder's files really take on disk (sparse overlays counted by blocks)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_blocks * 512
            except OSError:
                continue
    return total


class Sampler:
    """Samples ``base``'s labs every ``interval`` seconds in a thread of its own."""

    def __init__(self, base: Path, interval: float = 1.0) -> None:
        self.base = base
        self.interval = interval
        self.history: deque[dict[str, Any]] = deque(maxlen=int(HISTORY_SECONDS / interval))
        self._cpu: dict[int, tuple[float, float]] = {}
        self._links: dict[str, tuple[float, dict[str, int]]] = {}
        self._disk: dict[str, tuple[float, int]] = {}
        self._host: tuple[float, float] | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.count = 0

    def __repr__(self) -> str:
        return f"<Sampler {self.base} every {self.interval:g} s, {len(self.history)} kept>"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vboxlab-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                sample = self.sample()
            except Exception as exc:  # a lab vanishing mid-read must not end the sampler
                sample = {"t": time.time(), "error": f"{type(exc).__name__}: {exc}",
                          "labs": [], "host": {}}
            with self._changed:
                self.history.append(sample)
                self.count += 1
                self._changed.notify_all()
            self._stop.wait(max(0.05, self.interval - (time.monotonic() - started)))

    def latest(self) -> dict[str, Any] | None:
        with self._changed:
            return self.history[-1] if self.history else None

    def wait_newer(self, count: int, timeout: float) -> tuple[int, dict[str, Any] | None]:
        """Block until a sample newer than number ``count`` exists (or ``timeout``)."""
        with self._changed:
            self._changed.wait_for(lambda: self.count > count or self._stop.is_set(),
                                   timeout=timeout)
            return self.count, (self.history[-1] if self.history else None)

    # -- one sample -----------------------------------------------------
    def sample(self) -> dict[str, Any]:
        now = time.monotonic()
        try:
            labs = status(self.base) if self.base.is_dir() else []
        except VboxlabError as exc:
            return {"t": time.time(), "error": str(exc), "labs": [], "host": self._host_sample()}
        for lab in labs:
            for machine in lab["machines"]:
                self._machine_sample(lab["id"], machine, now)
            for link in lab.get("links", []):
                for direction in ("a_to_b", "b_to_a"):
                    key = f"{lab['id']}/{link['a']}/{link['b']}/{direction}"
                    link[direction]["rates"] = self._rates(key, link[direction]["counters"], now)
        return {"t": time.time(), "labs": labs, "host": self._host_sample()}

    def _machine_sample(self, lab: str, machine: dict[str, Any], now: float) -> None:
        pid = machine.get("pid")
        machine["cpu_percent"] = None
        machine["rss"] = None
        if isinstance(pid, int):
            used = cpu_seconds(pid)
            if used is not None:
                before = self._cpu.get(pid)
                if before is not None and now > before[0]:
                    machine["cpu_percent"] = round(100 * (used - before[1]) / (now - before[0]),
                                                   1)
                self._cpu[pid] = (now, used)
            machine["rss"] = resident_bytes(pid)
        key = f"{lab}/{machine['name']}"
        cached = self._disk.get(key)
        if cached is None or now - cached[0] >= DISK_EVERY:
            cached = (now, folder_disk_use(self.base / lab / machine["name"]))
            self._disk[key] = cached
        machine["disk"] = cached[1]

    def _rates(self, key: str, counters: dict[str, int], now: float) -> dict[str, float]:
        before = self._links.get(key)
        self._links[key] = (now, dict(counters))
        if before is None or now <= before[0]:
            return {"packets": 0.0, "bytes": 0.0, "drops": 0.0}
        span = now - before[0]

        def per_second(name: str) -> float:
            return round(max(0, counters.get(name, 0) - before[1].get(name, 0)) / span, 1)

        drops = sum(counters.get(k, 0) - before[1].get(k, 0) for k in counters
                    if k.startswith("drop_"))
        return {"packets": per_second("tx_packets"), "bytes": per_second("tx_bytes"),
                "drops": round(max(0, drops) / span, 1)}

    def _host_sample(self) -> dict[str, Any]:
        busy, total = _host_cpu()
        cpu = None
        if self._host is not None and total > self._host[1]:
            cpu = round(100 * (busy - self._host[0]) / (total - self._host[1]), 1)
        self._host = (busy, total)
        memory = _meminfo()
        disk = os.statvfs(self.base if self.base.exists() else self.base.parent)
        return {"cpu_percent": cpu, "cores": os.cpu_count(),
                "memory_total": memory.get("MemTotal"),
                "memory_available": memory.get("MemAvailable"),
                "disk_total": disk.f_blocks * disk.f_frsize,
                "disk_free": disk.f_bavail * disk.f_frsize}
