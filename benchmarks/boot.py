"""Boot to first command and command round trip, over the guest agent and over SSH, p50/p95, JSON.

    python benchmarks/boot.py --runs 10 --commands 50 --output benchmarks/results/boot.json

Two labs side by side, boots interleaved (agent, SSH, agent, ...): the default
channel (vboxlab's guest agent on virtio-serial, where the template has it) and
``channel="ssh"``. Boot is timed from ``lab.vm()`` being called (overlay,
initramfs, QEMU start, channel ready) to the first successful ``true``; round
trip is one ``true`` on the ready channel, after 10 untimed warm-up commands
(the guest is still starting sshd and its translation cache is cold). Each
agent boot's timeline (firmware and kernel loading, kernel, userspace, agent,
first command) is summarised too. Targets on a 2-core machine under TCG (issue
13): tiny boot p50 <= 4.0 s, debian-12 <= 10 s; round trip p50 <= 5 ms.

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

TARGET_BOOT_P50_S = {"tiny": 4.0, "debian-12": 10.0}
TARGET_ROUND_TRIP_P50_MS = 5.0
WARM_UP_COMMANDS = 10


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (it must still run)."""
    from vboxlab import procstats

    used = procstats.cpu_seconds(pid)
    if used is None:
        raise SystemExit(f"process {pid} is gone")
    return used


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
    emit(compare_channels(args.runs, args.commands, args.template, args.accel), args.output)
    return 0


def compare_channels(runs: int, commands: int, template: str, accel: str) -> dict[str, object]:
    """Boots and round trips over the agent and over SSH, interleaved, in two labs."""
    boots: dict[str, list[float]] = {"agent": [], "ssh": []}
    trips: dict[str, list[float]] = {"agent": [], "ssh": []}
    phases: dict[str, list[float]] = {}
    with Lab(template=template, accel=accel) as agent_lab, \
            Lab(template=template, accel=accel, channel="ssh") as ssh_lab:
        labs = {"agent": agent_lab, "ssh": ssh_lab}
        for run in range(runs):
            for channel, lab in labs.items():
                name = f"{channel[0]}{run}"
                started = time.perf_counter()
                vm = lab.vm(name)
                vm.succeed("true")
                boots[channel].append(time.perf_counter() - started)
                if channel == "agent":
                    if vm.boot_timeline is None:
                        raise SystemExit(f"{name}: the agent reported no boot timeline")
                    for phase, seconds in vm.boot_timeline.phases().items():
                        phases.setdefault(phase, []).append(seconds)
                for _ in range(WARM_UP_COMMANDS):
                    vm.succeed("true")
                for _ in range(commands):
                    tick = time.perf_counter()
                    vm.succeed("true")
                    trips[channel].append((time.perf_counter() - tick) * 1000)
                lab.remove_vm(name)
        choice = agent_lab.provider.accel_for(agent_lab.repository.built(template).kernel,
                                              agent_lab.log)
    boot = {channel: summary(values) for channel, values in boots.items()}
    trip = {channel: summary(values, 2) for channel, values in trips.items()}
    target_boot = TARGET_BOOT_P50_S.get(template)
    return {
        "benchmark": "boot",
        "template": template,
        "accelerator": choice.accel,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(),
                 "kernel": platform.release()},
        "runs": runs,
        "boot_to_first_command_s": boot,
        "command_round_trip_ms": trip,
        "agent_boot_phases_s": {phase: summary(values) for phase, values in phases.items()},
        "ssh_vs_agent": {"boot": round(boot["ssh"]["p50"] / boot["agent"]["p50"], 2),
                         "round_trip": round(trip["ssh"]["p50"] / trip["agent"]["p50"], 2)},
        "targets": {"boot_p50_s": target_boot, "round_trip_p50_ms": TARGET_ROUND_TRIP_P50_MS},
        "met": {"boot": target_boot is not None and boot["agent"]["p50"] <= target_boot,
                "round_trip": trip["agent"]["p50"] <= TARGET_ROUND_TRIP_P50_MS},
    }


if __name__ == "__main__":
    sys.exit(main())
