"""What a quiet kernel saves at boot: boot to first command with and without ``quiet``.

    python benchmarks/console.py --runs 5 --output benchmarks/results/console.json

The tiny template boots with ``quiet loglevel=3``: the serial console then shows
only errors. ``loglevel=7 systemd.show_status=1`` added to the command line (later settings win)
prints every kernel message, as a console that must make a failed boot readable
would. Both variants boot one after the other, interleaved, in one lab; the
median of the paired differences decides (issue 10: keep ``quiet`` only if it
saves more than 0.3 s), reported with the mean and its 95 % interval. Also counts
the console bytes each variant writes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from boot import emit, summary

from vboxlab.lab import Lab

VARIANTS = {"quiet": "", "verbose": "loglevel=7 systemd.show_status=1"}
THRESHOLD_S = 0.3
#: Student's t, 97.5 % quantile, by degrees of freedom (for the paired differences' interval)
T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
         10: 2.23, 11: 2.20, 12: 2.18, 14: 2.14, 19: 2.09}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="Boots per variant")
    parser.add_argument("--template", default="tiny")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    boots: dict[str, list[float]] = {name: [] for name in VARIANTS}
    console_bytes: dict[str, list[int]] = {name: [] for name in VARIANTS}
    with Lab(template=args.template, accel="tcg") as lab:
        for run in range(args.runs):
            for variant, extra in VARIANTS.items():
                name = f"{variant[0]}{run}"
                started = time.perf_counter()
                vm = lab.vm(name, kernel_args=extra)
                vm.succeed("true")
                boots[variant].append(time.perf_counter() - started)
                console_bytes[variant].append(vm.console_log.stat().st_size)
                lab.remove_vm(name)
    # paired: run i of both variants booted one after the other, under the same load
    pairs = [v - q for q, v in zip(boots["quiet"], boots["verbose"], strict=True)]
    mean = statistics.mean(pairs)
    half_width = (T_975.get(len(pairs) - 1, 2.0) * statistics.stdev(pairs) / len(pairs) ** 0.5
                  if len(pairs) > 1 else float("inf"))
    saved = statistics.median(pairs)
    result = {
        "benchmark": "console",
        "template": args.template,
        "boot_to_first_command_s": {v: summary(b) for v, b in boots.items()},
        "console_bytes_p50": {v: int(statistics.median(b)) for v, b in console_bytes.items()},
        "paired_differences_s": [round(d, 3) for d in pairs],
        "quiet_saves_s": round(saved, 3),
        "quiet_saves_mean_s": round(mean, 3),
        "quiet_saves_95ci_s": [round(mean - half_width, 3), round(mean + half_width, 3)],
        "threshold_s": THRESHOLD_S,
        "keep_quiet": saved > THRESHOLD_S,
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
