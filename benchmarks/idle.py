"""What a kept lab's idle guests cost with no host attached, and how fast a host gets in, JSON.

    python benchmarks/idle.py --vms 4 --window 10 --output benchmarks/results/idle.json

A lab of ``--vms`` tiny guests is booted with ``keep=True``. Each QEMU's CPU is
measured over ``--window`` seconds twice: while the lab's own process (a child
of this one) holds every agent channel (idle, connected), and after it closed
the lab kept and exited (channels closed, guests left running: what a kept test
lab leaves behind). Then each machine is attached as the CLI does and its first
command timed (the agent has to notice that a host came back).
The guest agent sleeps until its port's SIGIO while no host is there; before,
it looked every 10 ms. Target: a detached idle guest costs no more than 2x a
connected one, and a host that attaches is answered within 0.5 s.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import cpu_seconds, emit
from scale import qemu_pid

from vboxlab import labdirs
from vboxlab.lab import Lab


def idle_cpu(pids: dict[str, int], window: float) -> dict[str, float]:
    """Each process's CPU share (CPU seconds per second) over ``window`` seconds."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    time.sleep(window)
    return {name: round((cpu_seconds(pid) - before[name]) / window, 4)
            for name, pid in pids.items()}


def attach_seconds(base: Path, lab_id: str, name: str) -> float:
    """Attach ``name`` as the CLI does and time its first command."""
    machine = labdirs.attach_machine(base, lab_id, name)
    try:
        started = time.perf_counter()
        machine.succeed("true")
        return time.perf_counter() - started
    finally:
        labdirs.release_machine(machine)


def make_kept_lab(base: Path, vms: int, window: float) -> dict[str, object]:
    """In a child process (a kept lab's owner must be gone before anyone attaches): boot
    the guests, measure them idle with their channels held, close the lab kept."""
    with Lab(base=base, keep=True) as lab:
        machines = lab.vms({f"idle{i}": {} for i in range(vms)})
        pids = {name: qemu_pid(machine) for name, machine in machines.items()}
        for machine in machines.values():
            machine.succeed("true")
        time.sleep(3)  # the guests finish starting (sshd, first tasks)
        return {"lab": lab.id, "pids": pids, "connected": idle_cpu(pids, window)}


def measure(vms: int, window: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="vbl-idle-") as folder:
        base = Path(folder)
        try:
            made = json.loads(subprocess.run(
                [sys.executable, __file__, "--make-lab", str(base), str(vms), str(window)],
                check=True, stdout=subprocess.PIPE, text=True, timeout=600).stdout)
            lab_id = str(made["lab"])
            pids: dict[str, int] = made["pids"]  # type: ignore[assignment]
            connected: dict[str, float] = made["connected"]  # type: ignore[assignment]
            time.sleep(1)
            detached = idle_cpu(pids, window)
            attach = [attach_seconds(base, lab_id, name) for name in pids]
        finally:
            for record in labdirs.list_labs(base):  # the kept lab: its QEMUs and folder
                labdirs.remove_lab(record)
    connected_median = statistics.median(connected.values())
    detached_median = statistics.median(detached.values())
    ratio = detached_median / connected_median if connected_median else float("inf")
    return {
        "benchmark": "idle", "vms": vms, "window_s": window,
        "cpu_share_connected": connected, "cpu_share_detached": detached,
        "cpu_share_connected_median": round(connected_median, 4),
        "cpu_share_detached_median": round(detached_median, 4),
        "detached_vs_connected": round(ratio, 2),
        "attach_first_command_s": [round(s, 3) for s in attach],
        "met": {"detached_at_most_2x_connected": ratio <= 2.0,
                "attach_answered_within_0.5s": max(attach) <= 0.5},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vms", type=int, default=4, help="Guests in the kept lab")
    parser.add_argument("--window", type=float, default=10.0,
                        help="Seconds each CPU measurement lasts")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    parser.add_argument("--make-lab", nargs=3, metavar=("BASE", "VMS", "WINDOW"),
                        help=argparse.SUPPRESS)  # the child that owns the kept lab (measure)
    args = parser.parse_args()
    if args.make_lab:
        base, count, window = args.make_lab
        print(json.dumps(make_kept_lab(Path(base), int(count), float(window))))
        return 0
    if args.vms < 1:
        parser.error(f"--vms {args.vms}: give 1 or more guests")
    if args.window <= 0:
        parser.error(f"--window {args.window}: give a positive number of seconds")
    emit(measure(args.vms, args.window), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
