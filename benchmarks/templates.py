"""Template builds, archives and boots, per template, in one run, JSON out.

    python benchmarks/templates.py --boots 3 --output reports/bench-templates.json
    python benchmarks/templates.py --layers --boots 5 --output benchmarks/results/layers.json

With ``--layers``, for each layered template (netlab and the dev-* environments): its cold
build (base installed, nothing else cached: apt downloads included) beside the same template
built as a full debootstrap (base packages + the layer's, its files; in an empty cache, so
downloads included too), the disk each adds to the cache, and boot to first command of the
layer beside its base (``--boots`` each, alternating, p50).

For each template (tiny, debian-12, netlab) in a fresh cache: the cold build
(package downloads included), the cached build (inputs unchanged: nothing to do),
a forced rebuild with the package cache warm, export to a .tar.gz (time, size) and
import into another empty cache (time, all checksums verified), and boot to first
command (``--boots`` boots, p50).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from boot import emit

from vboxlab.errors import BuildError
from vboxlab.lab import Lab
from vboxlab.templates import TemplateRepository
from vboxlab.templates.archive import export_template, import_template

TEMPLATES = ("tiny", "debian-12", "netlab")
LAYERS = ("netlab", "dev-python", "dev-web", "dev-c", "dev-node")


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


def own_bytes(built) -> int:
    """What a template adds to the cache (a layer's kernel and initrd are hard links)."""
    return sum((built.folder / f).stat().st_size for f in built.manifest["files"]
               if (built.folder / f).stat().st_nlink == 1)


def full_definition(layer, base, folder: Path) -> Path:
    """The layer's template as a debootstrap of its own: base packages plus its packages."""
    target = folder / "defs" / layer.name
    target.mkdir(parents=True)
    definition = layer.definition
    packages = sorted({*base.definition.build.packages, *definition.build.packages})
    boot = base.definition.boot
    text = "\n".join([
        f'name = "{layer.name}"', f'version = "{layer.version}"',
        'description = "the same as a full debootstrap"', "[resources]",
        f"memory = {definition.resources.memory}", f"cpus = {definition.resources.cpus}",
        "[boot]", f'cmdline = "{boot.cmdline}"', f'files_into = "{boot.files_into}"',
        "[access]", f"channels = {base.definition.access.channels!r}".replace("'", '"'),
        "[build]", 'recipe = "debootstrap"', f"packages = {packages!r}".replace("'", '"'),
        f"disk_size_mb = {base.definition.build.disk_size_mb}", ""])
    (target / "template.toml").write_text(text)
    files = layer.folder / definition.build.files
    if files.is_dir():
        shutil.copytree(files, target / "rootfs", symlinks=True)
    return target.parent


def one_layer(name: str, folder: Path, boots: int) -> dict[str, object]:
    main_repo = TemplateRepository()
    layer = main_repo.built(name)
    base = layer.bases[0]
    # cold layer build: only its base installed (hard links of the cache's), nothing else
    repo = TemplateRepository(cache=folder / "layer-cache")
    base_copy = repo.images / base.template.name / base.template.version
    base_copy.mkdir(parents=True)
    for file in [*base.manifest["files"], "manifest.json"]:
        os.link(base.folder / file, base_copy / file)
    layer_s, (layer_built, _) = timed(lambda: repo.build(name, force=True))
    # the same template as a full debootstrap, in an empty cache
    full_repo = TemplateRepository(cache=folder / "full-cache",
                                   search=[full_definition(layer.template, base.template,
                                                           folder)])
    try:
        full_s, (full_built, _) = timed(lambda: full_repo.build(name))
    except BuildError as exc:  # debootstrap cannot install some sets of packages at once
        full_s, full_built = float("nan"), None
        full_error = str(exc).splitlines()[0] + " " + " ".join(
            line for line in str(exc).splitlines() if line.startswith("W:"))[:300]
    else:
        full_error = ""
    layer_bytes = own_bytes(layer_built)
    full_bytes = own_bytes(full_built) if full_built is not None else 0
    shutil.rmtree(folder / "full-cache", ignore_errors=True)
    shutil.rmtree(folder / "layer-cache", ignore_errors=True)
    # boot to first command, layer and base alternating
    boot_s: dict[str, list[float]] = {"layer": [], "base": []}
    request = {"layer": f"{name}@{layer.template.version}",
               "base": f"{base.template.name}@{base.template.version}"}
    for index in range(boots):
        for kind in ("layer", "base"):
            with Lab(base=folder / "labs", repository=main_repo, boot_timeout=300) as lab:
                seconds, vm = timed(lambda kind=kind, index=index:
                                    lab.vm(f"{kind}{index}", template=request[kind]))
                vm.succeed("true")
                boot_s[kind].append(round(seconds, 2))
    layer_p50, base_p50 = statistics.median(boot_s["layer"]), statistics.median(boot_s["base"])
    full = full_built is not None
    return {
        "base": f"{base.template.name} {base.template.version}",
        "layer_cold_build_s": round(layer_s, 1),
        "full_cold_build_s": round(full_s, 1) if full else None,
        "full_build_error": full_error,
        "build_ratio": round(layer_s / full_s, 3) if full else None, "build_target": 0.3,
        "layer_bytes": layer_bytes, "full_bytes": full_bytes if full else None,
        "size_ratio": round(layer_bytes / full_bytes, 3) if full else None,
        "size_target": 0.2,
        "full_build_note": "packages and files only: a debootstrap runs no [build] commands"
                           if layer.template.definition.build.commands else "",
        "boot_layer_s": boot_s["layer"], "boot_base_s": boot_s["base"],
        "boot_layer_p50_s": round(layer_p50, 2), "boot_base_p50_s": round(base_p50, 2),
        "boot_ratio": round(layer_p50 / base_p50, 3), "boot_target": 1.1,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3, help="Boots per template")
    parser.add_argument("--templates", nargs="*", default=None,
                        help=f"Templates (default: {' '.join(TEMPLATES)}; with --layers: "
                             f"{' '.join(LAYERS)})")
    parser.add_argument("--layers", action="store_true",
                        help="Layered templates against full debootstraps of the same")
    parser.add_argument("--output", type=Path, help="Also write the JSON here")
    args = parser.parse_args()
    if args.layers:
        result: dict[str, object] = {"benchmark": "template-layers", "boots": args.boots}
        for name in args.templates or LAYERS:
            with tempfile.TemporaryDirectory(prefix="vbl-l-", dir="/var/tmp") as scratch:
                result[name] = one_layer(name, Path(scratch), args.boots)
                print(name, json.dumps(result[name]), file=sys.stderr, flush=True)
        emit(result, args.output)
        return 0
    result = {"benchmark": "templates", "boots": args.boots}
    for name in args.templates or TEMPLATES:
        with tempfile.TemporaryDirectory(prefix="vbl-t-", dir="/var/tmp") as scratch:
            result[name] = one_template(name, Path(scratch), args.boots)
            print(name, result[name], file=sys.stderr, flush=True)
    emit(result, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
