"""What a quiet kernel saves at boot: boot to first command with and without ``quiet``.

    python benchmarks/console.py --runs 5 --output benchmarks/results/console.json

Two variants of the template's kernel command line, added at its end (later
settings win): ``quiet loglevel=3`` (the serial console shows only errors; the
kernel log is then read over SSH once the guest answers, which this timing
includes) and ``loglevel=7 systemd.show_status=1`` (every kernel and systemd
message on the console). Both boot one after the other, interleaved, in one lab.
Two figures per boot: wall time to the first command, and QEMU's CPU time (user +
system) up to then, which a shared, noisy machine disturbs much less. The median
of the paired differences decides (issue 10: keep ``quiet`` only if it saves more
than 0.3 s), reported with the mean and its 95 % interval; also the console bytes
each variant writes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from boot import emit, summary

from vboxlab.lab import Lab

VARIANTS = {"quiet": "quiet loglevel=3", "verbose": "loglevel=7 systemd.show_status=1"}
THRESHOLD_S = 0.3
#: Student's t, 97.5 % quantile, by degrees of freedom (for the paired differences' interval)
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
         10: 2.23, 11: 2.20, 12: 2.18, 14: 2.14, 19: 2.09}


def qemu_cpu_seconds(workdir: Path) -> float:
    """User + system CPU seconds the VM's QEMU has used so far."""
    pid = json.loads((workdir / "machine.json").read_text())["pid"]
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paired(values: dict[str, list[float]]) -> dict[str, object]:
    """verbose - quiet for each pair of boots: median, mean and its 95 % interval."""
    pairs = [v - q for q, v in zip(values["quiet"], values["verbose"], strict=True)]
    mean = statistics.mean(pairs)
    half = (T_975.get(len(pairs) - 1, 2.0) * statistics.stdev(pairs) / len(pairs) ** 0.5
            if len(pairs) > 1 else float("inf"))
    return {"median": round(statistics.median(pairs), 3), "mean": round(mean, 3),
            "ci95": [round(mean - half, 3), round(mean + half, 3)],
            "pairs": [round(d, 3) for d in pairs]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Boots per variant")
    parser.add_argument("--template", default="tiny")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    boots: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    console_bytes: dict[str, list[int]] = {name: [] for name in VARIANTS}
    with Lab(template=args.template, accel="tcg") as lab:
        for run in range(args.runs):
            for variant, extra in VARIANTS.items():
                name = f"{variant[0]}{run}"
                started = time.perf_counter()
                vm = lab.vm(name, kernel_args=extra)
                vm.succeed("true")
                boots[variant].append(time.perf_counter() - started)
                cpu[variant].append(qemu_cpu_seconds(vm.state_dir))
                console_bytes[variant].append(vm.console_log.stat().st_size)
                lab.remove_vm(name)
    wall = paired(boots)
    cpu_saved = paired(cpu)
    saved = float(wall["median"])  # type: ignore[arg-type]
    result = {
        "benchmark": "console",
        "template": args.template,
        "boot_to_first_command_s": {v: summary(b) for v, b in boots.items()},
        "console_bytes_p50": {v: int(statistics.median(b)) for v, b in console_bytes.items()},
        "qemu_cpu_to_first_command_s": {v: summary(c) for v, c in cpu.items()},
        "quiet_saves_wall_s": wall,
        "quiet_saves_cpu_s": cpu_saved,
        "threshold_s": THRESHOLD_S,
        "keep_quiet": saved > THRESHOLD_S and float(cpu_saved["median"]) > THRESHOLD_S,  # type: ignore[arg-type]
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
