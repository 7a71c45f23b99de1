"""Providers side by side: boot, restore and round trip for qemu and libvirt; JSON.

    python benchmarks/providers.py --runs 5 --output benchmarks/results/providers.json

One lab per provider (tiny template, TCG), runs interleaved (qemu, libvirt,
qemu, ...) so drift hits both alike: boot to first command (``lab.vm()`` to a
successful ``true``), restore of a snapshot to first command, and 30 command
round trips on a warm machine. libvirt's restore is also measured through its
own ``revertToSnapshot`` beside the ``loadvm`` the provider uses. Targets
(issue 15): libvirt local boot within 1.2x of qemu, restore within 2x. Remote
(``qemu+ssh://``) is not measured yet: the provider does not reach remote hosts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from boot import emit, summary

from vboxlab.lab import Lab

PROVIDERS = ("qemu", "libvirt")
TARGETS = {"boot_ratio": 1.2, "restore_ratio": 2.0}



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    boots: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    restores: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    trips: dict[str, list[float]] = {p: [] for p in PROVIDERS}
    reverts: list[float] = []
    labs = {p: Lab(provider=p, accel="tcg") for p in PROVIDERS}
    try:
        for run in range(args.runs):
            for provider, lab in labs.items():
                started = time.perf_counter()
                vm = lab.vm(f"b{run}")
                vm.succeed("true")
                boots[provider].append(time.perf_counter() - started)
                vm.snapshot("base")
                vm.succeed("touch /root/after")
                started = time.perf_counter()
                vm.restore("base")
                vm.succeed("true")
                restores[provider].append(time.perf_counter() - started)
                for _ in range(5):
                    vm.succeed("true")
                for _ in range(30):
                    started = time.perf_counter()
                    vm.succeed("true")
                    trips[provider].append(time.perf_counter() - started)
                if provider == "libvirt":
                    import libvirt

                    domain = vm.handle._domain  # type: ignore[attr-defined]
                    snapshot = domain.snapshotLookupByName("base", 0)
                    started = time.perf_counter()
                    domain.revertToSnapshot(snapshot, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
                    vm.channel.interrupt("reverted")
                    vm.channel.connect(timeout=30)
                    vm.succeed("true")
                    reverts.append(time.perf_counter() - started)
                lab.remove_vm(vm.name)
    finally:
        for lab in labs.values():
            lab.close()
    result: dict[str, object] = {
        "boot_s": {p: summary(v) for p, v in boots.items()},
        "restore_s": {p: summary(v) for p, v in restores.items()},
        "round_trip_ms": {p: summary([x * 1000 for x in v]) for p, v in trips.items()},
        "libvirt_revert_to_snapshot_s": summary(reverts),
        "boot_ratio": round(statistics.median(boots["libvirt"]) /
                            statistics.median(boots["qemu"]), 2),
        "restore_ratio": round(statistics.median(restores["libvirt"]) /
                               statistics.median(restores["qemu"]), 2),
        "targets": TARGETS, "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    result["met"] = {"boot_ratio": result["boot_ratio"] <= TARGETS["boot_ratio"],  # type: ignore[operator]
                     "restore_ratio": result["restore_ratio"] <= TARGETS["restore_ratio"]}  # type: ignore[operator]
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
