"""Choosing QEMU's accelerator: KVM only when a probe shows it really runs a guest.

Opening /dev/kvm proves nothing (on some hosts KVM spins forever in the guest
kernel), so the probe boots the template's kernel under KVM with no root file
system and ``panic=-1``: a working KVM reaches the panic and QEMU exits within
a second or two; a broken one is killed at the timeout. The verdict is cached
per host boot and QEMU binary.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from vboxlab.paths import cache_dir

log = logging.getLogger(__name__)
PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator to use and why."""

    accel: str  # "kvm" or "tcg"
    reason: str


def _cache_key(qemu: str) -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id}:{qemu}:{Path(qemu).stat().st_mtime_ns}"


def cached_verdict(qemu: str) -> AccelChoice | None:
    """The KVM probe's verdict for this boot of the host and this QEMU, if one was cached."""
    cache = cache_dir() / "kvm-probe.json"
    try:
        saved = json.loads(cache.read_text())
        if saved.get("key") == _cache_key(qemu):
            return AccelChoice(saved["accel"], saved["reason"] + " (cached probe)")
    except (OSError, json.JSONDecodeError, KeyError, AttributeError):
        return None
    return None


def probe_kvm(qemu: str, kernel: Path, *, use_cache: bool = True) -> AccelChoice:
    """Run the KVM probe (or reuse its cached verdict)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return AccelChoice("tcg", "/dev/kvm is missing or not accessible")
    cache = cache_dir() / "kvm-probe.json"
    key = _cache_key(qemu)
    cached = cached_verdict(qemu) if use_cache else None
    if cached is not None:
        return cached
    argv = [qemu, "-nodefaults", "-no-user-config", "-display", "none", "-accel", "kvm",
            "-m", "128", "-kernel", str(kernel), "-append", "console=ttyS0 panic=-1 quiet",
            "-serial", "none", "-no-reboot"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=PROBE_TIMEOUT)
        took = time.monotonic() - started
        if proc.returncode == 0:
            choice = AccelChoice("kvm", f"KVM probe booted a guest kernel in {took:.1f} s")
        else:
            choice = AccelChoice("tcg", f"KVM probe failed: {err.decode(errors='replace')[-200:]}")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        choice = AccelChoice("tcg", f"KVM probe guest did not finish within {PROBE_TIMEOUT:g} s "
                             "(KVM present but not working here)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"key": key, "accel": choice.accel, "reason": choice.reason}))
    return choice


def choose(requested: str, qemu: str, kernel: Path | None) -> AccelChoice:
    """Resolve ``auto`` | ``kvm`` | ``tcg`` (``$VBOXLAB_ACCEL`` overrides ``auto``); ``kernel``
    boots the KVM probe (None: a template whose disk boots itself, so no probe: TCG)."""
    requested = os.environ.get("VBOXLAB_ACCEL", requested) if requested == "auto" else requested
    if requested == "tcg":
        return AccelChoice("tcg", "TCG requested")
    if requested == "kvm":
        return AccelChoice("kvm", "KVM requested")
    if kernel is None:
        return AccelChoice("tcg", "no kernel to probe KVM with (a template whose disk boots "
                                  "itself); ask for KVM with --lab-accel kvm")
    return probe_kvm(qemu, kernel)
