"""Template builds, archives and boots, per template, in one run, JSON out.

    python benchmarks/templates.py --boots 3 --output reports/bench-templates.json

For each template (tiny, debian-12, netlab) in a fresh cache: the cold build
(package downloads included), the cached build (inputs unchanged: nothing to do),
a forced rebuild with the package cache warm, export to a .tar.gz (time, size) and
import into another empty cache (time, all checksums verified), and boot to first
command (``--boots`` boots, p50).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit

from vboxlab.lab import Lab
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import export_template, import_template

TEMPLATES = ("tiny", "debian-12", "netlab")


def timed(action):
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def one_template(name: str, folder: Path, boots: int) -> dict[str, object]:
    repo = TemplateRepository(cache=folder / "cache")
    cold, (built, ran) = timed(lambda: repo.build(name))
    assert ran
    cached, (_, ran_again) = timed(lambda: repo.build(name))
    warm, _ = timed(lambda: repo.build(name, force=True))
    built = repo.built(name)
    archive = folder / f"{name}.tar.gz"
    export_s, _ = timed(lambda: export_template(built, archive))
    other = TemplateRepository(cache=folder / "imported", search=[])
    import_s, _ = timed(lambda: import_template(archive, other))
    image_bytes = sum((built.folder / f).stat().st_size for f in built.manifest["files"])
    boot_s = []
    for index in range(boots):
        with Lab(base=folder / "labs", repository=repo, boot_timeout=300) as lab:
            seconds, vm = timed(lambda index=index: lab.vm(f"b{index}", template=name))
            vm.succeed("true")
            boot_s.append(round(seconds, 2))
    return {
        "cold_build_s": round(cold, 1), "cached_build_s": round(cached, 2),
        "cached_build_skipped": not ran_again, "rebuild_warm_packages_s": round(warm, 1),
        "image_bytes": image_bytes, "archive_bytes": archive.stat().st_size,
        "archive_ratio": round(archive.stat().st_size / image_bytes, 3),
        "export_s": round(export_s, 2), "import_s": round(import_s, 2),
        "boot_to_first_command_s": boot_s,
        "boot_p50_s": round(statistics.median(boot_s), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3, help="Boots per template")
    parser.add_argument("--templates", nargs="*", default=list(TEMPLATES))
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    result: dict[str, object] = {"benchmark": "templates", "boots": args.boots}
    for name in args.templates:
        with tempfile.TemporaryDirectory(prefix="vbl-t-", dir="/var/tmp") as scratch:
            result[name] = one_template(name, Path(scratch), args.boots)
            print(name, result[name], file=sys.stderr, flush=True)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
