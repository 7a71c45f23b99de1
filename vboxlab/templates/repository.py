"""The local template repository: definitions found on disk, built images in the cache."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vboxlab import __version__
from vboxlab.errors import BuildError, TemplateNotBuilt, TemplateNotFound
from vboxlab.paths import cache_dir, repo_root
from vboxlab.templates.definition import DEFINITION_FILE, Template, load_template
from vboxlab.templates.initramfs import Progress, build_image, inputs_digest, resolve_inputs

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def definition_paths() -> list[Path]:
    """Folders searched for template definitions, first match wins.

    The current project's ``fixtures/templates`` (a user's own templates), then
    the ones shipped with vboxlab (the source checkout or the installed wheel).
    """
    paths = [Path.cwd() / "fixtures" / "templates"]
    if extra := os.environ.get("VBOXLAB_TEMPLATE_PATH"):
        paths = [Path(p) for p in extra.split(os.pathsep) if p] + paths
    root = repo_root()
    if root is not None:
        paths.append(root / "fixtures" / "templates")
    paths.append(Path(__file__).resolve().parent.parent / "_templates")
    unique: list[Path] = []
    for path in paths:
        if path.is_dir() and path.resolve() not in [u.resolve() for u in unique]:
            unique.append(path)
    return unique


@dataclass(frozen=True)
class BuiltTemplate:
    """A template image in the cache, with its manifest."""

    template: Template
    folder: Path
    manifest: dict[str, Any]

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.cpio"

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TemplateRepository:
    """Template definitions plus the cache of built images (``<cache>/templates``)."""

    def __init__(self, cache: Path | None = None, search: list[Path] | None = None) -> None:
        self.cache = (cache or cache_dir())
        self.search = search if search is not None else definition_paths()

    @property
    def images(self) -> Path:
        return self.cache / "templates"

    def definitions(self) -> dict[str, Template]:
        """Every template definition found, by name."""
        found: dict[str, Template] = {}
        for folder in self.search:
            for candidate in sorted(folder.iterdir()):
                if (candidate / DEFINITION_FILE).is_file() and candidate.name not in found:
                    found[candidate.name] = load_template(candidate)
        return found

    def definition(self, name: str) -> Template:
        """The definition called ``name``; the error lists the known ones."""
        known = self.definitions()
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            where = ", ".join(str(p) for p in self.search) or "no template folders"
            raise TemplateNotFound(f"unknown template {name!r}; known templates: {listed} "
                                   f"(searched {where})")
        return known[name]

    def image_dir(self, template: Template) -> Path:
        return self.images / template.name / template.version

    def built(self, name: str) -> BuiltTemplate:
        """The built image of ``name``; raises TemplateNotBuilt with the command to build it."""
        template = self.definition(name)
        folder = self.image_dir(template)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise TemplateNotBuilt(
                f"template {name!r} ({template.version}) is not built yet; build it with "
                f"`vboxlab templates build {name}` (or `make template`)")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("source_digest") != template.source_digest():
            raise TemplateNotBuilt(
                f"template {name!r}: its definition in {template.folder} changed since it was "
                f"built; rebuild it with `vboxlab templates build {name}`")
        return BuiltTemplate(template, folder, manifest)

    def status(self, name: str) -> str:
        """``built``, ``stale`` or ``not built`` (without asking apt)."""
        try:
            self.built(name)
        except TemplateNotBuilt as exc:
            return "stale" if "changed" in str(exc) else "not built"
        return "built"

    @contextmanager
    def _lock(self, name: str) -> Iterator[None]:
        folder = self.images / name
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".lock").open("w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another build of %s is running; waiting for it", name)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def build(self, name: str, *, force: bool = False,
              progress: Progress | None = None) -> tuple[BuiltTemplate, bool]:
        """Build ``name`` unless an image with the same inputs exists.

        Returns the image and whether a build ran. The build happens in a
        scratch folder renamed into place at the end, under a lock, so an
        interrupted build is never seen as usable and two builds never mix.
        """
        report = progress or (lambda step: log.info("%s: %s", name, step))
        template = self.definition(name)
        report("resolving Debian packages")
        packages = resolve_inputs(template)
        digest = inputs_digest(template, packages)
        with self._lock(name):
            target = self.image_dir(template)
            manifest_path = target / MANIFEST
            if not force and manifest_path.is_file():
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("inputs_digest") == digest:
                    return BuiltTemplate(template, target, manifest), False
            scratch = self.images / name / f".build-{template.version}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            started = time.monotonic()
            try:
                extra = build_image(template, packages, scratch, self.cache / "debs", report)
                manifest = {
                    "name": template.name,
                    "version": template.version,
                    "description": template.definition.description,
                    "inputs_digest": digest,
                    "source_digest": template.source_digest(),
                    "packages": [p.pin for p in packages],
                    "files": {p.name: _sha256(p) for p in sorted(scratch.iterdir())
                              if p.is_file()},
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - started, 1),
                    "builder": f"vboxlab {__version__}",
                    **extra,
                }
                (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                old = target.with_name(f".old-{target.name}-{os.getpid()}")
                if target.exists():
                    target.rename(old)
                scratch.rename(target)
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(scratch, ignore_errors=True)
                raise
            if not (target / MANIFEST).is_file():
                raise BuildError(f"build of {name} left no manifest in {target}")
            return BuiltTemplate(template, target, manifest), True
