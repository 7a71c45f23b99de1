"""Boot media speed against the standard tools, side by side in one run, JSON out.

    python benchmarks/media.py --runs 3 --output reports/bench-media.json   (root: loop devices)

ISO build: vboxlab (pycdlib, Rock Ridge + Joliet) vs ``xorriso -as mkisofs -R -J`` on
the same trees, one 200 MB file and 2,000 small files; target <= 1.5x xorriso's time.
USB write onto a loop device (fresh sparse backing file each run): vboxlab's writer
(fsync included, verification timed apart) vs ``dd bs=4M conv=fsync`` with a 200 MB
random image (target >= 0.9x dd's throughput) and a 200 MB image that is 70 % zeros
(target >= 3x faster than dd). Medians of ``--runs`` runs, tools interleaved.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit

from vboxlab.media import build_iso
from vboxlab.media.usb import Overrides, write_image

MB = 1000 * 1000
MiB = 1 << 20


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def make_trees(folder: Path) -> dict[str, Path]:
    big = folder / "one-200MB-file"
    big.mkdir()
    with (big / "big.bin").open("wb") as out:
        for _ in range(200):
            out.write(os.urandom(MB))
    small = folder / "2000-small-files"
    for i in range(2000):
        sub = small / f"dir{i % 40:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"file-{i:04d}.dat").write_bytes(os.urandom(2048 + (i * 131) % 6144))
    return {"one_200MB_file": big, "2000_small_files": small}


def iso_builds(trees: dict[str, Path], folder: Path, runs: int) -> dict[str, object]:
    xorriso = shutil.which("xorriso")
    if xorriso is None:
        raise SystemExit("xorriso not found: apt-get install xorriso")
    results: dict[str, object] = {}
    for name, tree in trees.items():
        ours, theirs = [], []
        for _ in range(runs):
            ours.append(timed(lambda tree=tree: build_iso(tree, folder / "ours.iso")))
            theirs.append(timed(lambda tree=tree: subprocess.run(
                [xorriso, "-as", "mkisofs", "-R", "-J", "-quiet", "-o",
                 str(folder / "xorriso.iso"), str(tree)], check=True, capture_output=True)))
        ratio = statistics.median(ours) / statistics.median(theirs)
        results[name] = {
            "vboxlab_s": [round(t, 3) for t in ours], "xorriso_s": [round(t, 3) for t in theirs],
            "image_bytes": (folder / "ours.iso").stat().st_size,
            "xorriso_image_bytes": (folder / "xorriso.iso").stat().st_size,
            "time_ratio_vs_xorriso": round(ratio, 2), "met": ratio <= 1.5}
    return results


class Loop:
    """A loop device over a fresh sparse file for every run (detached at the end)."""

    def __init__(self, folder: Path, size: int) -> None:
        self.backing = folder / "stick.img"
        self.size = size
        self.device = ""

    def fresh(self) -> str:
        self.close()
        self.backing.unlink(missing_ok=True)
        with self.backing.open("wb") as out:
            out.truncate(self.size)
        self.device = subprocess.run(["losetup", "--find", "--show", str(self.backing)],
                                     capture_output=True, text=True, check=True).stdout.strip()
        return self.device

    def close(self) -> None:
        if self.device:
            subprocess.run(["losetup", "-d", self.device], check=True)
            self.device = ""


def usb_writes(folder: Path, runs: int) -> dict[str, object]:
    dense = folder / "random-200MB.img"
    with dense.open("wb") as out:
        for _ in range(200):
            out.write(os.urandom(MB))
    sparse = folder / "70pct-zeros-200MB.img"
    with sparse.open("wb") as out:  # 60 MB of data spread between runs of zeros (holes)
        for _ in range(20):
            out.write(os.urandom(3 * MB))
            out.seek(7 * MB, os.SEEK_CUR)
        out.truncate(200 * MB)
    loop = Loop(folder, 256 * MiB)
    results: dict[str, object] = {}
    try:
        for name, image, target, better in (("random_200MB", dense, 0.9, "throughput"),
                                            ("sparse_70pct_zeros_200MB", sparse, 3.0, "speed")):
            ours, dd, verify = [], [], []
            for _ in range(runs):
                device = loop.fresh()
                result = write_image(image, Path(device), overrides=Overrides(allow_fixed=True))
                ours.append(result.write_seconds)
                verify.append(result.verify_seconds)
                device = loop.fresh()
                dd.append(timed(lambda device=device, image=image: subprocess.run(
                    ["dd", f"if={image}", f"of={device}", "bs=4M", "conv=fsync"],
                    check=True, capture_output=True)))
            ratio = statistics.median(dd) / statistics.median(ours)
            results[name] = {
                "bytes": image.stat().st_size, "vboxlab_write_s": [round(t, 3) for t in ours],
                "vboxlab_verify_s": [round(t, 3) for t in verify],
                "dd_s": [round(t, 3) for t in dd],
                "vboxlab_MBps": round(image.stat().st_size / statistics.median(ours) / MB, 1),
                "dd_MBps": round(image.stat().st_size / statistics.median(dd) / MB, 1),
                f"{better}_ratio_vs_dd": round(ratio, 2), "target": target,
                "met": ratio >= target}
    finally:
        loop.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="Runs per tool and case")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("the USB part needs root (loop devices)")
    with tempfile.TemporaryDirectory(prefix="vbl-media-", dir="/var/tmp") as scratch:
        folder = Path(scratch)
        trees = make_trees(folder)
        result = {"benchmark": "media", "runs": args.runs,
                  "iso_build": iso_builds(trees, folder, args.runs),
                  "usb_write": usb_writes(folder, args.runs)}
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
