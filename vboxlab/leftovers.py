"""What labs under a state folder left on this host: the evidence that nothing leaks.

Used by the repository's own test run (it fails if anything is left) and by
``benchmarks/leaks.py`` (which SIGKILLs sessions and counts). Everything a lab
makes carries its folder in a command line, a working directory or a backing
file, so it can be traced back to the state folder; tap devices carry the
``vl`` prefix (see the netns provider).
"""

from __future__ import annotations

from pathlib import Path

KINDS = ("qemu processes", "fabric processes", "netns holders", "tap devices", "mounts",
         "loop devices", "lab folders")


def _processes() -> list[tuple[int, str, str]]:
    """(pid, argv joined by spaces, working folder) of every process, zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = str((entry / "cwd").readlink())
        except OSError:
            continue
        if state != "Z":
            found.append((int(entry.name), argv, cwd))
    return found


def find_leftovers(folder: Path, *, tap_prefix: str = "vl") -> dict[str, list[str]]:
    """Everything of labs under ``folder`` still present, by kind (see ``KINDS``)."""
    base = str(folder)
    left: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for pid, argv, cwd in _processes():
        inside = cwd == base or cwd.startswith(base + "/")
        if "qemu-system" in argv and base in argv:
            left["qemu processes"].append(f"pid {pid}: {argv[:120]}")
        elif "vboxlab-fabric" in argv and base in argv:
            left["fabric processes"].append(f"pid {pid}: {argv[:120]}")
        elif inside and argv.startswith(("unshare ", "sleep infinity")):
            left["netns holders"].append(f"pid {pid} in {cwd}")
    left["tap devices"] = [p.name for p in Path("/sys/class/net").glob(f"{tap_prefix}*")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == base or point.startswith(base + "/"):
            left["mounts"].append(point)
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        text = backing.read_text().strip()
        if text.startswith(base + "/"):
            left["loop devices"].append(f"/dev/{backing.parent.parent.name} over {text}")
    if folder.is_dir():
        left["lab folders"] = [str(p) for p in sorted(folder.iterdir()) if p.is_dir()]
    return left


def describe(left: dict[str, list[str]]) -> list[str]:
    """One line per leftover, for a report."""
    return [f"{kind[:-1] if kind.endswith('s') else kind}: {item}"
            for kind, items in left.items() for item in items]
