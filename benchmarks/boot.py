"""Boot-to-first-command and command round trip of the tiny template, p50/p95, as JSON.

    python benchmarks/boot.py --runs 10 --commands 50 --output reports/bench-boot.json

Boot is timed from ``lab.vm()`` being called (overlay, initramfs, QEMU start,
SSH connect) to the first successful ``true``; round trip is one ``true`` on the
VM's persistent SSH connection. Targets on a 2-core machine under TCG: boot p50
<= 8 s, round trip p50 <= 25 ms.

    python benchmarks/boot.py --kernels --runs 6 --output benchmarks/results/boot-kernels.json

compares, in interleaved pairs in one lab, a boot of the template's compressed
bzImage (``VBOXLAB_DIRECT_KERNEL=0``) with the default PVH direct boot of the
kernel vboxlab unpacked once (no decompression in the guest).

    python benchmarks/boot.py --profile --runs 5 --output benchmarks/results/boot-profile.json

splits each boot into phases by watching the serial console (wall-clock seconds
after ``lab.vm()`` is called): the kernel's first line, ``Run /init``, the
template's ready line, sshd listening, the first command answered.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from vboxlab.lab import Lab

TARGET_BOOT_P50_S = 8.0
TARGET_ROUND_TRIP_P50_MS = 25.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float], digits: int = 3) -> dict[str, float]:
    return {"p50": round(statistics.median(values), digits),
            "p95": round(percentile(values, 0.95), digits),
            "min": round(min(values), digits), "max": round(max(values), digits),
            "n": len(values)}


def emit(result: dict[str, object], output: Path | None) -> None:
    """Print the result as JSON and, with ``output``, write it there too."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")


def compare_kernels(runs: int, template: str, accel: str) -> dict[str, object]:
    """Boot to first command with the bzImage and with PVH direct boot, alternating."""
    boots: dict[str, list[float]] = {"bzimage": [], "pvh_direct": []}
    with Lab(template=template, accel=accel) as lab:
        for run in range(runs):
            for mode in boots:
                os.environ["VBOXLAB_DIRECT_KERNEL"] = "0" if mode == "bzimage" else "1"
                started = time.perf_counter()
                vm = lab.vm(f"{mode[0]}{run}")
                vm.succeed("true")
                boots[mode].append(time.perf_counter() - started)
                lab.remove_vm(vm.name)
    os.environ.pop("VBOXLAB_DIRECT_KERNEL", None)
    return {"benchmark": "boot-kernels", "template": template, "runs": runs,
            "bzimage_s": summary(boots["bzimage"]), "pvh_direct_s": summary(boots["pvh_direct"]),
            "saved_p50_s": round(statistics.median(boots["bzimage"]) -
                                 statistics.median(boots["pvh_direct"]), 2)}


#: console marks of a tiny boot, in order: (phase, text that ends it)
PHASES = (("kernel first line", "[    0.000000]"), ("kernel runs /init", "Run /init"),
          ("init ready", " ready"), ("sshd listening", "Server listening"))


def profile(runs: int, template: str, accel: str) -> dict[str, object]:
    """When each boot phase ended, seconds after lab.vm() was called (console watched)."""
    import threading

    marks: dict[str, list[float]] = {name: [] for name, _ in PHASES}
    marks["first command"] = []
    with Lab(template=template, accel=accel) as lab:
        for run in range(runs):
            name = f"p{run}"
            seen: dict[str, float] = {}
            done = threading.Event()
            started = time.perf_counter()

            def watch(name: str = name, seen: dict[str, float] = seen, done: Any = done,
                      started: float = started) -> None:
                console = lab.dir / name / "console.log"
                while not done.is_set():
                    text = console.read_text(errors="replace") if console.is_file() else ""
                    for phase, needle in PHASES:
                        if phase not in seen and needle in text:
                            seen[phase] = time.perf_counter() - started
                    time.sleep(0.005)

            watcher = threading.Thread(target=watch)
            watcher.start()
            vm = lab.vm(name)
            vm.succeed("true")
            seen["first command"] = time.perf_counter() - started
            done.set()
            watcher.join()
            for phase, value in seen.items():
                marks[phase].append(value)
            lab.remove_vm(name)
    return {"benchmark": "boot-profile", "template": template, "runs": runs,
            "direct_kernel": os.environ.get("VBOXLAB_DIRECT_KERNEL", "1") != "0",
            "phase_ends_s": {phase: summary(values) for phase, values in marks.items()
                             if values}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="Boots to time (at least 10)")
    parser.add_argument("--commands", type=int, default=50, help="Round trips per boot")
    parser.add_argument("--template", default="tiny")
    parser.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    parser.add_argument("--kernels", action="store_true",
                        help="Compare the compressed kernel with PVH direct boot instead")
    parser.add_argument("--profile", action="store_true",
                        help="Split boots into phases by watching the serial console instead")
    args = parser.parse_args()
    if args.profile:
        emit(profile(args.runs, args.template, args.accel), args.output)
        return 0
    if args.kernels:
        emit(compare_kernels(args.runs, args.template, args.accel), args.output)
        return 0
    boots: list[float] = []
    trips: list[float] = []
    with Lab(template=args.template, accel=args.accel) as lab:
        for run in range(args.runs):
            name = f"b{run}"
            started = time.perf_counter()
            vm = lab.vm(name)
            vm.succeed("true")
            boots.append(time.perf_counter() - started)
            for _ in range(args.commands):
                tick = time.perf_counter()
                vm.succeed("true")
                trips.append((time.perf_counter() - tick) * 1000)
            lab.remove_vm(name)
        accel = lab.provider.accel_for(lab.repository.built(args.template).kernel, lab.log)
    boot = summary(boots)
    trip = summary(trips)
    result = {
        "benchmark": "boot",
        "template": args.template,
        "accelerator": accel.accel,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "kernel": platform.release()},
        "boot_to_first_command_s": boot,
        "command_round_trip_ms": trip,
        "targets": {"boot_p50_s": TARGET_BOOT_P50_S, "round_trip_p50_ms": TARGET_ROUND_TRIP_P50_MS},
        "met": {"boot": boot["p50"] <= TARGET_BOOT_P50_S,
                "round_trip": trip["p50"] <= TARGET_ROUND_TRIP_P50_MS},
    }
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
