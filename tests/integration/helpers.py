"""Helpers for tests that run whole pytest sessions and look for what they left."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "vboxlab.cli"]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``vboxlab ARGS``; with ``check``, its exit status must be 0."""
    result = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120,
                            check=False)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


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
