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

The floor, in the same rounds (``--floor-sizes``, default 2, 4 and 8): the very QEMU
command lines vboxlab ran for that many tiny VMs, started by hand (no vboxlab) one alone
and then all of them at most ``--parallel`` at a time, each done when its guest agent
says READY: what any launcher would get from QEMU on this host. ``vs_floor`` is the
lab's time over the floor's (vboxlab's own share); ``floor_ratio`` the floor's N boots
over N x its one boot (what this host's cores give, with nothing of vboxlab in it).

Targets on a 2-core host: 4 VMs <= 0.6x and 8 VMs <= 0.55x of the sequential
boots. The figures a 16-core host would give are estimated from the measured
CPU seconds per boot and the host's CPU per VM (stated as an estimate).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import cpu_seconds, emit

from vboxlab.bringup import default_parallel
from vboxlab.lab import Lab, host_memory_available_mb
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


class Floor:
    """The QEMU command lines of ``count`` tiny VMs vboxlab booted (then stopped), run again
    by hand: QEMU's own bring-up on this host, with nothing of vboxlab in it."""

    def __init__(self, lab: Lab, count: int) -> None:
        machines = lab.vms({f"floor{i}": {} for i in range(count)})
        self.runs: list[tuple[list[str], Path]] = []
        for machine in machines.values():
            argv = Path(f"/proc/{qemu_pid(machine)}/cmdline").read_bytes().split(b"\0")[:-1]
            agent = machine.handle.launch.agent  # type: ignore[attr-defined]
            self.runs.append(([a.decode() for a in argv], Path(agent)))
        for machine in machines.values():
            machine.stop()

    @staticmethod
    def _ready(sock_path: Path, started: float, timeout: float = 180) -> socket.socket:
        """Until the guest agent's first bytes (its READY) come out of QEMU's socket; the
        socket is kept open, as a lab keeps it."""
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(sock_path))
                sock.settimeout(max(1.0, timeout - (time.perf_counter() - started)))
                if sock.recv(64):
                    return sock
            except OSError:
                pass
            sock.close()
            if time.perf_counter() - started > timeout:
                raise SystemExit(f"floor: no agent READY on {sock_path} in {timeout:g} s")
            time.sleep(0.01)

    @contextlib.contextmanager
    def _spawned(self) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[socket.socket]]]:
        procs: list[subprocess.Popen[bytes]] = []
        channels: list[socket.socket] = []
        try:
            yield procs, channels
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
            for channel in channels:
                channel.close()

    def boot(self, count: int, parallel: int) -> float:
        """Seconds until ``count`` of the VMs answer, at most ``parallel`` booting at once
        (the next starts as one answers, as a lab's bring-up does); all stay up until the
        last answers, as in a lab."""
        slots = threading.Semaphore(parallel)
        failed: list[BaseException] = []
        with self._spawned() as (procs, channels):
            lock = threading.Lock()

            def one(argv: list[str], sock_path: Path) -> None:
                with slots:
                    try:
                        with lock:
                            procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                          stdout=subprocess.DEVNULL,
                                                          stderr=subprocess.DEVNULL))
                        channel = self._ready(sock_path, time.perf_counter())
                        with lock:
                            channels.append(channel)
                    except BaseException as exc:  # reported after the join
                        failed.append(exc)

            started = time.perf_counter()
            threads = [threading.Thread(target=one, args=run) for run in self.runs[:count]]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            took = time.perf_counter() - started
        if failed:
            raise SystemExit(f"floor: {failed[0]}")
        return round(took, 2)


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


def floor_run(floor: Floor, size: int, parallel: int) -> dict[str, Any]:
    """The floor for ``size`` VMs: one alone before and after, then ``size`` at once."""
    before = floor.boot(1, 1)
    seconds = floor.boot(size, parallel)
    after = floor.boot(1, 1)
    one = round((before + after) / 2, 2)
    return {"seconds": seconds, "one_boot_s": one, "ratio": round(seconds / (size * one), 3)}


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
    parser.add_argument("--floor-sizes", default="2,4,8",
                        help="Lab sizes also booted by hand from vboxlab's QEMU command "
                             "lines, no vboxlab ('' to skip)")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    try:
        floor_sizes = [int(s) for s in args.floor_sizes.split(",") if s]
    except ValueError:
        parser.error(f"--floor-sizes {args.floor_sizes!r}: give sizes as 2,4,8 (or '')")
    if any(size < 1 for size in floor_sizes):
        parser.error(f"--floor-sizes {args.floor_sizes!r}: sizes must be 1 or more")
    # the lab's own limit when none is given: the host's cores, fewer if memory is short
    parallel_limit = args.parallel or default_parallel(256, host_memory_available_mb())
    cores = os.cpu_count() or 1
    singles: list[dict[str, Any]] = []
    runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="vbl-floor-") as folder, \
            Lab(base=Path(folder)) as floor_lab:
        floor = Floor(floor_lab, max(floor_sizes)) if floor_sizes else None
        for _ in range(args.rounds):
            for size in sizes:  # one boot just before and one just after each lab: drift
                before = single_boots(1)  # (this shared host's speed changes by the minute)
                lab = bring_up(size, 0, args.parallel, ping=size == max(sizes),
                               ksm=args.ksm and size in (4, 8, max(sizes)))
                after = single_boots(1)
                singles += [before, after]
                lab["one_boot_s"] = round((before["median_s"] + after["median_s"]) / 2, 2)
                lab["ratio_vs_sequential"] = round(lab["seconds"] / (size * lab["one_boot_s"]),
                                                   3)
                if floor is not None and size in floor_sizes:
                    lab["floor"] = floor_run(floor, size, parallel_limit)
                    lab["vs_floor"] = round(lab["seconds"] / lab["floor"]["seconds"], 3)
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
        if size in floor_sizes:
            labs[-1]["floor_ratio"] = statistics.median(r["floor"]["ratio"] for r in measured)
            labs[-1]["vs_floor"] = statistics.median(r["vs_floor"] for r in measured)
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
    # the same targets for QEMU alone: whether this host's cores allow them at all
    result["floor_met"] = {f"{n}_vms_{limit}": by_size[n]["floor_ratio"] <= limit
                           for n, limit in ((4, 0.6), (8, 0.55))
                           if n in by_size and "floor_ratio" in by_size[n]}
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
