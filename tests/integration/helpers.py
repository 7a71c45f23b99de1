"""Helpers for tests that run whole pytest sessions and look for what they left."""

from __future__ import annotations

import time
from pathlib import Path


def qemu_pids(marker: str) -> list[int]:
    """PIDs of QEMU processes whose command line mentions ``marker`` (a lab folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "qemu-system" in argv and marker in argv and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
