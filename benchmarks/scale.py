"""Bring-up of labs of many machines, side by side in one run, JSON out.

    python benchmarks/scale.py --output benchmarks/results/scale.json

Each round, for each size N: one tiny VM booted alone (``lab.vm``: "one boot",
with the CPU seconds QEMU spent until it answered) right before and one right
after a star topology of N tiny VMs on one switch (``lab.network``, VMs booting
side by side, at most ``--parallel`` at a time, default the host's cores),
compared with N x the mean of those two boots, so drift hits both alike; medians
over the rounds are reported.
Memory per VM (RSS and PSS of each QEMU process: PSS counts a page shared by k
processes as 1/k; and of its mapping of the initrd, with the number of distinct
initrd files the lab's QEMUs map) is read once each lab is up; for 4, 8 and the largest lab also
with the kernel's same-page merging (KSM) switched on until it has scanned twice
(``--no-ksm``: not), and KSM put back as it was. The largest lab proves itself
with a ping from its first node to its last. Last, 4 VMs and 32 namespace hosts
on one switch, and a ping from a VM to the last namespace host.

Targets on a 2-core host: 4 VMs <= 0.6x and 8 VMs <= 0.55x of the sequential
boots. The figures a 16-core host would give are estimated from the measured
CPU seconds per boot and the host's CPU per VM (stated as an estimate).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import cpu_seconds, emit

from vboxlab.lab import Lab
from vboxlab.machine import Machine
from vboxlab.memshare import KSM, ksm_state
from vboxlab.net import Topology


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of a process in MiB."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key] = int(rest.split()[0]) / 1024
    return values["Rss"], values["Pss"]


def initrd_mapping(pid: int, path: str) -> tuple[str, float, float]:
    """(inode, RSS MiB, PSS MiB) of a process's mapping of the file ``path`` (its initrd)."""
    inode, rss, pss, inside = "", 0.0, 0.0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 5 and "-" in fields[0] and not fields[0].endswith(":"):
            inside = len(fields) >= 6 and fields[5] == path
            if inside:
                inode = f"{fields[3]}:{fields[4]}"
        elif inside and fields[0] in ("Rss:", "Pss:"):
            value = int(fields[1]) / 1024
            if fields[0] == "Rss:":
                rss += value
            else:
                pss += value
    return inode, rss, pss


def qemu_pid(machine: Machine) -> int:
    """The QEMU process of a machine (from its machine.json)."""
    pid = json.loads((machine.state_dir / "machine.json").read_text()).get("pid")
    if not isinstance(pid, int):
        raise SystemExit(f"{machine.name}: no QEMU pid (is the provider qemu?)")
    return pid


def single_boots(count: int) -> dict[str, Any]:
    """``count`` tiny VMs booted one after another: seconds and QEMU CPU seconds each."""
    seconds, cpu = [], []
    with tempfile.TemporaryDirectory(prefix="vbl-scale-") as folder, \
            Lab(base=Path(folder)) as lab:
        for index in range(count):
            started = time.perf_counter()
            machine = lab.vm(f"one{index}")
            seconds.append(round(time.perf_counter() - started, 2))
            cpu.append(round(cpu_seconds(qemu_pid(machine)), 2))
            lab.remove_vm(machine.name)
    return {"seconds": seconds, "median_s": statistics.median(seconds),
            "qemu_cpu_s": cpu, "median_qemu_cpu_s": statistics.median(cpu)}


def star(size: int, namespaces: int = 0) -> Topology:
    nodes: dict[str, Any] = {f"vm{i}": {} for i in range(size)}
    nodes.update({f"ns{i}": {"provider": "netns"} for i in range(namespaces)})
    return Topology.from_dict({
        "name": f"star{size}x{namespaces}",
        "segments": {"lan": {"subnet": "10.77.0.0/16"}},
        "nodes": nodes,
        "links": [{"between": [name, "lan"]} for name in nodes]})


def with_ksm(pids: list[int], timeout: float = 180) -> dict[str, Any]:
    """PSS per VM once KSM has merged what the VMs have alike (two full scans), then KSM
    put back as it was (where it was off, its pages unmerged first)."""
    if not ksm_state().available or os.geteuid() != 0:
        return {"measured": False, "why": "no KSM in this kernel, or not root"}
    before = {name: (KSM / name).read_text().strip()
              for name in ("run", "pages_to_scan", "sleep_millisecs")}
    try:
        (KSM / "pages_to_scan").write_text("4000")
        (KSM / "sleep_millisecs").write_text("20")
        (KSM / "run").write_text("1")
        started, scans = time.perf_counter(), ksm_state().full_scans
        while ksm_state().full_scans < scans + 2 and time.perf_counter() - started < timeout:
            time.sleep(0.5)
        memory = [memory_mb(pid) for pid in pids]
        state = ksm_state()
        return {"measured": True, "seconds_to_merge": round(time.perf_counter() - started, 1),
                "rss_mb_per_vm": round(statistics.mean(m[0] for m in memory), 1),
                "pss_mb_per_vm": round(statistics.mean(m[1] for m in memory), 1),
                "saved_mb": round(state.saved_mb, 1)}
    finally:
        if before["run"] == "0":  # 2: unmerge every page (done when the write returns)
            (KSM / "run").write_text("2")
        (KSM / "run").write_text(before["run"])
        for name in ("pages_to_scan", "sleep_millisecs"):
            (KSM / name).write_text(before[name])


def bring_up(size: int, namespaces: int, parallel: int | None,
             ping: bool, ksm: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="vbl-scale-") as folder, \
            Lab(base=Path(folder), parallel=parallel) as lab:
        started, host = time.perf_counter(), time.process_time()
        network = lab.network(star(size, namespaces))
        took, host_cpu = time.perf_counter() - started, time.process_time() - host
        vms = [network.node(f"vm{i}") for i in range(size)]
        memory = [memory_mb(qemu_pid(vm)) for vm in vms]
        initrds = [initrd_mapping(qemu_pid(vm), str(vm.handle.launch.initrd)) for vm in vms]
        result: dict[str, Any] = {
            "vms": size, "namespace_hosts": namespaces, "seconds": round(took, 2),
            "host_cpu_s": round(host_cpu, 2),
            "rss_mb_per_vm": round(statistics.mean(m[0] for m in memory), 1),
            "pss_mb_per_vm": round(statistics.mean(m[1] for m in memory), 1),
            # the template's initrd: one file (inode) mapped by every QEMU, its pages shared
            "initrd_files_mapped": len({inode for inode, _, _ in initrds}),
            "initrd_rss_mb_per_vm": round(statistics.mean(i[1] for i in initrds), 1),
            "initrd_pss_mb_per_vm": round(statistics.mean(i[2] for i in initrds), 2)}
        if ping:
            last = f"ns{namespaces - 1}" if namespaces else f"vm{size - 1}"
            network.node("vm0").succeed(f"ping -c 3 -W 5 {last}")
            result["ping"] = f"vm0 -> {last}: 3 of 3 answered"
        if ksm:
            result["with_ksm"] = with_ksm([qemu_pid(vm) for vm in vms])
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8,16", help="Lab sizes (tiny VMs)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="Rounds; each measures one boot right before each lab")
    parser.add_argument("--parallel", type=int, default=None,
                        help="VMs booting at once (default: the lab's, the host's cores)")
    parser.add_argument("--namespaces", type=int, default=32,
                        help="Namespace hosts beside 4 VMs (0: skip)")
    parser.add_argument("--ksm", action=argparse.BooleanOptionalAction, default=True,
                        help="Also measure memory with KSM merging (root; put back after)")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    cores = os.cpu_count() or 1
    singles: list[dict[str, Any]] = []
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    for _ in range(args.rounds):
        for size in sizes:  # one boot just before and one just after each lab: drift
            before = single_boots(1)  # (this shared host's speed changes by the minute)
            lab = bring_up(size, 0, args.parallel, ping=size == max(sizes),
                           ksm=args.ksm and size in (4, 8, max(sizes)))
            after = single_boots(1)
            singles += [before, after]
            lab["one_boot_s"] = round((before["median_s"] + after["median_s"]) / 2, 2)
            lab["ratio_vs_sequential"] = round(lab["seconds"] / (size * lab["one_boot_s"]), 3)
            runs[size].append(lab)
    one_boot = statistics.median(s["median_s"] for s in singles)
    one_cpu = statistics.median(s["median_qemu_cpu_s"] for s in singles)
    labs = []
    for size in sizes:
        measured = runs[size]
        labs.append({
            "vms": size, "runs": measured,
            "seconds_median": statistics.median(r["seconds"] for r in measured),
            "ratio_vs_sequential": statistics.median(r["ratio_vs_sequential"] for r in measured),
            "rss_mb_per_vm": measured[-1]["rss_mb_per_vm"],
            "pss_mb_per_vm": measured[-1]["pss_mb_per_vm"],
            "initrd_files_mapped": measured[-1]["initrd_files_mapped"],
            "initrd_rss_mb_per_vm": measured[-1]["initrd_rss_mb_per_vm"],
            "initrd_pss_mb_per_vm": measured[-1]["initrd_pss_mb_per_vm"],
            **({"with_ksm": measured[-1]["with_ksm"]} if "with_ksm" in measured[-1] else {}),
            "host_cpu_s_per_vm": round(statistics.median(r["host_cpu_s"] for r in measured)
                                       / size, 3)})
    result: dict[str, Any] = {"benchmark": "scale", "cores": cores, "rounds": args.rounds,
                              "parallel": args.parallel or "default (cores)",
                              "one_boot_median_s": one_boot, "one_boot_qemu_cpu_s": one_cpu,
                              "labs": labs}
    if args.namespaces and os.geteuid() != 0:
        result["mixed"] = "not measured: namespace hosts need root"
    elif args.namespaces:
        result["mixed"] = bring_up(4, args.namespaces, args.parallel, ping=True)
    by_size = {lab["vms"]: lab for lab in labs}
    result["met"] = {f"{n}_vms_{limit}": by_size[n]["ratio_vs_sequential"] <= limit
                     for n, limit in ((4, 0.6), (8, 0.55)) if n in by_size}
    # an estimate, not a measurement: a tiny boot keeps one core busy for its CPU seconds
    # (QEMU's CPU equals its wall time here), so with C cores N boots take about
    # max(one boot, N * cpu / C), plus the host's own work per machine, which runs on this
    # process's threads (Python: measured here per VM)
    host_per_vm = statistics.median(lab["host_cpu_s_per_vm"] for lab in labs)
    result["estimate_16_cores_s"] = {
        str(n): round(max(one_boot, n * one_cpu / 16) + n * host_per_vm, 1) for n in sizes}
    result["estimate_note"] = ("estimated from the measured CPU seconds of one boot and the "
                               "host's CPU per VM, not measured on a 16-core host")
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
