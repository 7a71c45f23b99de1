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


def attack_topology(target_link: str = "") -> str:
    """Two namespace hosts on one segment: ``target`` (10.70.0.10) and ``attacker``.

    ``target_link`` adds properties to the target's link (YAML, e.g. ``delay: 3ms``).
    """
    extra = f"\n        {target_link}" if target_link else ""
    return f"""
    segments: {{lan: {{subnet: 10.70.0.0/24}}}}
    nodes:
      target: {{provider: netns}}
      attacker: {{provider: netns}}
    links:
      - between: [target, lan]
        addresses: {{target: 10.70.0.10}}{extra}
      - between: [attacker, lan]
"""


#: start an HTTP server on the target of attack_topology() and wait until it answers
HTTP_SERVER = (f"({sys.executable} -m http.server 80 --bind 10.70.0.10 >/dev/null 2>&1 &); "
               "for i in $(seq 50); do curl -s -o /dev/null http://10.70.0.10/ && break; "
               "sleep 0.1; done")
