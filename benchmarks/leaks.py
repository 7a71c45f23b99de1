"""SIGKILL pytest sessions at random moments and count what they leave behind.

    python benchmarks/leaks.py --runs 50 --output benchmarks/results/leaks.json   (root)

Each run starts a whole pytest session (its own state folder) doing one of five
things, kills the pytest process with SIGKILL at a random moment, waits 15 s and
counts what is left: QEMU and fabric processes, netns holders, tap devices,
mounts, loop devices over lab files, and lab folders. Lab folders of a dead run
stay until ``vboxlab clean`` (they are the post-mortem); they are counted
before and after it. The target is 0 of N for everything else, and 0 lab
folders after clean.

Scenarios, in turn: ``booting`` (killed 0.5-9 s after the session starts:
Python start, lab creation, QEMU start, boot), ``mid-command`` (a ``sleep`` in
the guest), ``mid-snapshot`` (a snapshot/restore/delete loop), ``netns-network``
(building and tearing down a 3-host namespace network in a loop) and
``media-write`` (writing an ISO onto a loop device in a loop, verified each
time). The last four are killed 0-2 s after the session says it got there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from boot import emit

from vboxlab.leftovers import KINDS, find_leftovers

WAIT_AFTER_KILL_S = 15.0

SCENARIOS = {
    "booting": """
        import time

        def test_boot(lab):
            lab.vm("a")
            time.sleep(600)
    """,
    "mid-command": """
        from pathlib import Path

        def test_command(lab):
            vm = lab.vm("a")
            Path({ready!r}).touch()
            vm.succeed("sleep 600", timeout=700)
    """,
    "mid-snapshot": """
        from pathlib import Path

        def test_snapshots(lab):
            vm = lab.vm("a")
            vm.snapshot("base")
            Path({ready!r}).touch()
            for i in range(10_000):
                vm.snapshot(f"s{{i}}")
                vm.restore("base")
                vm.delete_snapshot(f"s{{i}}")
    """,
    "netns-network": """
        from pathlib import Path

        from vboxlab.net import Topology

        LINE = {{"defaults": {{"provider": "netns"}}, "nodes": {{"h1": None, "r1": None,
                 "h2": None}}, "links": [{{"between": ["h1", "r1"]}},
                                        {{"between": ["r1", "h2"]}}]}}

        def test_networks(lab):
            Path({ready!r}).touch()
            for _ in range(10_000):
                with lab.network(Topology.from_dict(LINE)) as net:
                    net.node("h1").succeed("ping -c 1 -W 1 h2")
    """,
    "media-write": """
        import os
        from pathlib import Path

        from vboxlab.media import build_iso
        from vboxlab.media.usb import Overrides, write_image

        def test_writes(lab):
            tree = lab.dir / "tree"
            tree.mkdir()
            (tree / "data.bin").write_bytes(os.urandom(24 << 20))
            image = lab.dir / "m.iso"
            build_iso(tree, image)
            Path({ready!r}).touch()
            for _ in range(10_000):
                write_image(image, Path({device!r}), overrides=Overrides(allow_fixed=True))
    """,
}


def loop_device(folder: Path) -> str:
    """A 64 MiB loop device standing in for a USB stick (outside the state folder)."""
    backing = folder / "stick.img"
    with backing.open("wb") as out:
        out.truncate(64 << 20)
    return subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                          text=True, check=True).stdout.strip()


def one_run(index: int, scenario: str, rng: random.Random, work: Path,
            device: str) -> dict[str, object]:
    run = work / f"run{index}"
    run.mkdir()
    base = Path(tempfile.mkdtemp(prefix=f"lk{index}-", dir="/tmp"))
    ready = run / "ready"
    (run / "test_inner.py").write_text(textwrap.dedent(
        SCENARIOS[scenario].format(ready=str(ready), device=device)))
    env = dict(os.environ, VBOXLAB_STATE_DIR=str(base))
    env.pop("CI", None)
    started = time.monotonic()
    session = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "--lab-dir", str(base), "test_inner.py"],
        cwd=run, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if scenario == "booting":
        delay = rng.uniform(0.5, 9.0)
        time.sleep(delay)
    else:
        deadline = time.monotonic() + 120
        while not ready.exists() and session.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
    ended_early = session.poll() is not None
    killed_at = time.monotonic() - started
    session.send_signal(signal.SIGKILL)
    output = session.communicate()[0].decode(errors="replace")
    time.sleep(WAIT_AFTER_KILL_S)
    left = find_leftovers(base)
    folders_before_clean = len(left["lab folders"])
    clean = subprocess.run([sys.executable, "-m", "vboxlab.cli", "clean", "--lab-dir",
                            str(base)], capture_output=True, text=True, env=env, check=False)
    after = find_leftovers(base)
    counts = {kind: len(items) for kind, items in left.items()}
    counts["lab folders"] = len(after["lab folders"])
    result = {"run": index, "scenario": scenario, "killed_after_s": round(killed_at, 2),
              "random_delay_s": round(delay, 2), "ended_before_the_kill": ended_early,
              "left": counts, "lab_folders_before_clean": folders_before_clean,
              "details": {k: v for k, v in left.items() if v and k != "lab folders"},
              "clean_exit": clean.returncode}
    if ended_early:
        result["output"] = output[-1500:]
    for pid_line in left["qemu processes"] + left["fabric processes"] + left["netns holders"]:
        pid = int(pid_line.split()[1].rstrip(":"))
        with contextlib.suppress(ProcessLookupError):  # never leave the next run a dirty host
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="Sessions to kill (default 50)")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the random moments")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), action="append",
                        help="Only these scenarios (default: all, in turn)")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/leaks.py needs root (netns hosts, loop devices)", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 32)
    rng = random.Random(seed)
    scenarios = args.scenario or list(SCENARIOS)
    runs = []
    with tempfile.TemporaryDirectory(prefix="vboxlab-leaks-") as folder:
        work = Path(folder)
        device = loop_device(work)
        try:
            for index in range(args.runs):
                scenario = scenarios[index % len(scenarios)]
                runs.append(one_run(index, scenario, rng, work, device))
                print(json.dumps({k: runs[-1][k] for k in ("run", "scenario", "killed_after_s",
                                                            "left")}), file=sys.stderr)
        finally:
            subprocess.run(["losetup", "-d", device], check=False)
    totals = {kind: sum(int(r["left"][kind]) for r in runs) for kind in KINDS}  # type: ignore[index]
    dirty = [r["run"] for r in runs if any(r["left"].values())]  # type: ignore[attr-defined]
    result = {
        "benchmark": "leaks",
        "runs": len(runs),
        "seed": seed,
        "wait_after_kill_s": WAIT_AFTER_KILL_S,
        "by_scenario": {s: sum(1 for r in runs if r["scenario"] == s) for s in scenarios},
        "left_in_total": totals,
        "runs_with_leftovers": dirty,
        "lab_folders_before_clean": sum(int(r["lab_folders_before_clean"]) for r in runs),  # type: ignore[call-overload]
        "sessions_that_ended_before_the_kill": [r["run"] for r in runs
                                                if r["ended_before_the_kill"]],
        "target": "0 of N",
        "met": not dirty,
        "runs_detail": runs,
    }
    emit(result, args.output)
    return 0 if not dirty else 1


if __name__ == "__main__":
    sys.exit(main())
