"""What a lab's machines used while it ran: peak CPU and resident memory, CPU seconds, duration.

A :class:`UsageRecorder` samples every running machine of a lab folder (the
QEMU process each ``machine.json`` names) every few seconds with the same
figures the dashboard shows (:mod:`vboxlab.procstats`), and keeps
``usage.json`` in the lab's folder up to date (written whole): when the lab
started and last ran, and per machine the CPUs and memory asked, the peak CPU
(as a share of one core, over a sample) and the peak resident memory (the guest
pages QEMU touched plus its own). ``vboxlab cost`` reads it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.procstats import cpu_seconds, resident_bytes

USAGE_FILE = "usage.json"
log = logging.getLogger(__name__)


class UsageRecorder:
    """Samples ``folder``'s machines in a daemon thread until :meth:`stop`."""

    def __init__(self, folder: Path, interval: float = 2.0, write_every: int = 5) -> None:
        self.folder = folder
        self.interval = interval
        self.write_every = write_every
        self.started = time.time()
        self.machines: dict[str, dict[str, Any]] = {}
        self._last_cpu: dict[int, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vboxlab-usage", daemon=True)

    def start(self) -> UsageRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take a last sample and write the file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.sample()
        self.write()

    def _run(self) -> None:
        count = 0
        while not self._stop.wait(self.interval):
            try:
                self.sample()
                count += 1
                if count % self.write_every == 0:
                    self.write()
            except Exception:  # a lab folder vanishing mid-read must not kill the thread
                log.debug("usage sample of %s failed", self.folder, exc_info=True)

    def sample(self) -> None:
        now = time.monotonic()
        for info_path in sorted(self.folder.glob("*/machine.json")):
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                continue
            pid, start = info.get("pid"), info.get("start")
            if not (isinstance(pid, int) and isinstance(start, int) and
                    procs.is_alive(pid, start)):
                continue
            launch = info.get("launch") or {}
            record = self.machines.setdefault(info_path.parent.name, {
                "memory_mib": launch.get("memory"), "cpus": launch.get("cpus"),
                "template": info.get("template"), "peak_rss": 0, "peak_cpu_percent": 0.0,
                "cpu_seconds": 0.0, "samples": 0})
            used, rss = cpu_seconds(pid), resident_bytes(pid)
            if used is None or rss is None:
                continue
            before = self._last_cpu.get(pid)
            if before is not None and now > before[0]:
                percent = 100 * (used - before[1]) / (now - before[0])
                record["peak_cpu_percent"] = round(max(record["peak_cpu_percent"], percent), 1)
                record["cpu_seconds"] = round(record["cpu_seconds"] + used - before[1], 2)
            self._last_cpu[pid] = (now, used)
            record["peak_rss"] = max(record["peak_rss"], rss)
            record["samples"] += 1

    def write(self) -> None:
        data = {"started": self.started, "last": time.time(),
                "duration_s": round(time.time() - self.started, 1),
                "interval_s": self.interval, "machines": self.machines}
        if not self.folder.is_dir():
            return
        tmp = self.folder / f".{USAGE_FILE}.tmp"
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.folder / USAGE_FILE)


def read_usage(folder: Path) -> dict[str, Any] | None:
    """A lab folder's ``usage.json``, or None."""
    try:
        data: dict[str, Any] = json.loads((folder / USAGE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data.get("machines"), dict) else None
