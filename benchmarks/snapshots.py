"""Snapshot speed, side by side in one run: fresh boot vs restore, take time and size, and
the wall time of a test suite with rollback vs a reboot per test. JSON out.

    python benchmarks/snapshots.py --runs 20 --tests 50 --output reports/bench-snapshots.json

Targets on a 2-core machine under TCG (issue 13): restore-to-first-command <= 0.25 s p50 and
at least 16x faster than a fresh boot; the suite at least 20x faster with rollback. Each
restore is also split into its steps (QEMU's snapshot-load, the agent answering HELLO, the
first command), since under TCG the first command after a load runs on an empty translation
cache (QEMU flushes all translated code when it loads a snapshot).
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit, summary

from vboxlab.lab import Lab

TARGET_RESTORE_P50_S = 0.25
TARGET_SPEEDUP = 16.0
TARGET_SUITE_SPEEDUP = 20.0


def suite_wall_time(tests: int, fresh: bool, base: Path) -> float:
    """Run ``tests`` small tests through pytest; with ``fresh`` each boots its own VM."""
    marker = "@pytest.mark.fresh_vm\n" if fresh else ""
    body = "import pytest\n\n" + "".join(
        f"{marker}def test_{i}(vm):\n"
        f"    vm.succeed('echo {i} > /data/f && echo {i} > /tmp/m')\n"
        f"    assert vm.succeed('cat /data/f /tmp/m') == '{i}\\n{i}\\n'\n\n\n"
        for i in range(tests))
    with tempfile.TemporaryDirectory(prefix="vbl-bench-") as folder:
        (Path(folder) / "test_suite.py").write_text(body)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--lab-dir", str(base), "test_suite.py"], cwd=folder,
                              capture_output=True, text=True, check=False)
        took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"benchmark suite failed:\n{proc.stdout[-3000:]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="Boots and restores to time")
    parser.add_argument("--tests", type=int, default=50, help="Tests in the suite comparison")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    boots: list[float] = []
    restores: list[float] = []
    takes: list[float] = []
    sizes: list[float] = []
    steps: dict[str, list[float]] = {"snapshot-load": [], "agent answers": [],
                                     "first command": [], "second command": []}
    with tempfile.TemporaryDirectory(prefix="vbl-") as folder, Lab(base=Path(folder)) as lab:
        for run in range(args.runs):
            started = time.perf_counter()
            fresh = lab.vm(f"boot{run}")
            fresh.succeed("true")
            boots.append(time.perf_counter() - started)
            lab.remove_vm(f"boot{run}")
        vm = lab.vm("snap")
        vm.succeed("echo base > /data/f")
        vm.snapshot("clean")
        for run in range(args.runs):
            vm.succeed(f"echo {run} > /data/f; dd if=/dev/urandom of=/tmp/junk bs=1M count=8 "
                       "2>/dev/null; (sleep 900 >/dev/null 2>&1 &)")
            started = time.perf_counter()
            vm.restore("clean")
            vm.succeed("true")
            restores.append(time.perf_counter() - started)
            assert vm.succeed("cat /data/f") == "base\n"
            started = time.perf_counter()
            node = vm.snapshot(f"take{run}")
            takes.append(time.perf_counter() - started)
            sizes.append(node.size / 1048576)
            vm.delete_snapshot(f"take{run}")
            vm.restore("clean")
            vm.succeed("echo dirty > /tmp/m")
            ticks = [time.perf_counter()]  # the same restore, step by step
            vm.channel.interrupt("benchmark")
            vm.handle.snapshot_load("clean")
            ticks.append(time.perf_counter())
            vm.channel.connect(timeout=60)
            ticks.append(time.perf_counter())
            vm.succeed("true")
            ticks.append(time.perf_counter())
            vm.succeed("true")
            ticks.append(time.perf_counter())
            for step, (before, after) in zip(steps, itertools.pairwise(ticks), strict=True):
                steps[step].append(after - before)
        base = Path(folder) / "suite"
        with_rollback = suite_wall_time(args.tests, fresh=False, base=base)
        with_reboot = suite_wall_time(args.tests, fresh=True, base=base)
    boot, restore = summary(boots), summary(restores)
    speedup = round(boot["p50"] / restore["p50"], 1)
    result = {
        "benchmark": "snapshots",
        "host_cpus": os.cpu_count(),
        "fresh_boot_to_first_command_s": boot,
        "restore_to_first_command_s": restore,
        "restore_speedup_p50": speedup,
        "restore_steps_s": {step: summary(values) for step, values in steps.items()},
        "snapshot_take_s": summary(takes),
        "snapshot_size_mib": summary(sizes, 1),
        "suite": {"tests": args.tests, "rollback_wall_s": round(with_rollback, 1),
                  "reboot_per_test_wall_s": round(with_reboot, 1),
                  "speedup": round(with_reboot / with_rollback, 1)},
        "targets": {"restore_p50_s": TARGET_RESTORE_P50_S, "speedup": TARGET_SPEEDUP,
                    "suite_speedup": TARGET_SUITE_SPEEDUP},
        "met": {"restore": restore["p50"] <= TARGET_RESTORE_P50_S,
                "speedup": speedup >= TARGET_SPEEDUP,
                "suite_speedup": with_reboot / with_rollback >= TARGET_SUITE_SPEEDUP},
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
