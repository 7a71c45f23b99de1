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

from pydantic import ValidationError

from vboxlab import __version__, procs
from vboxlab.errors import BuildError, ConfigError, TemplateNotBuilt, TemplateNotFound
from vboxlab.paths import cache_dir, repo_root
from vboxlab.templates import layer, rootfs
from vboxlab.templates.debs import Package
from vboxlab.templates.definition import (
    DEFINITION_FILE,
    Template,
    TemplateDefinition,
    effective_definition,
    load_template,
)
from vboxlab.templates.initramfs import Progress, build_image, inputs_digest, resolve_inputs
from vboxlab.templates.pins import read_pins
from vboxlab.templates.trust import local_origin
from vboxlab.templates.versions import TemplateRequest, newest, parse_version

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


#: how deep a chain of layers may go (base, layer on it, layer on that, ...)
MAX_LAYERS = 8


@dataclass(frozen=True)
class BuiltTemplate:
    """A template image in the cache, with its manifest.

    A layer's ``bases`` are the templates under its disk, nearest first; a layer whose
    base is missing or was rebuilt since carries ``base_problem`` instead.
    """

    template: Template
    folder: Path
    manifest: dict[str, Any]
    bases: tuple[BuiltTemplate, ...] = ()
    base_problem: str | None = None

    @property
    def base_ref(self) -> tuple[str, str] | None:
        """(name, version) of the base this template is a layer over, if it is one."""
        base = self.manifest.get("base")
        if not isinstance(base, dict):
            return None
        return str(base.get("name")), str(base.get("version"))

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.cpio"

    @property
    def disk(self) -> Path:
        return self.folder / "disk.qcow2"

    @property
    def firmware(self) -> str:
        """``kernel`` (QEMU boots kernel and initrd), or ``bios``/``uefi`` (the disk boots)."""
        return self.template.definition.boot.firmware

    @property
    def manifest_digest(self) -> str:
        """SHA-256 of the manifest (which lists every file's digest): the build's identity."""
        return file_sha256(self.folder / MANIFEST)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
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

    def installed(self, name: str | None = None) -> list[BuiltTemplate]:
        """Every usable built image (of ``name``), oldest version first.

        A half-built or interrupted build never counts: only folders whose
        manifest was written last, by a finished build or a verified import.
        """
        found = []
        names = [name] if name is not None else sorted(
            p.name for p in self.images.iterdir() if p.is_dir()) if self.images.is_dir() else []
        for each in names:
            folder = self.images / each
            if not folder.is_dir():
                continue
            for version_dir in folder.iterdir():
                if version_dir.name.startswith(".") or not (version_dir / MANIFEST).is_file():
                    continue
                built = self._from_manifest(version_dir)
                if built is not None:
                    found.append(self._with_bases(built))
        return sorted(found, key=lambda b: (b.template.name, parse_version(b.template.version)))

    def _from_manifest(self, folder: Path) -> BuiltTemplate | None:
        try:
            manifest = json.loads((folder / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("ignoring %s: unreadable manifest (%s)", folder, exc)
            return None
        if "definition" in manifest:
            try:
                definition = TemplateDefinition.model_validate(manifest["definition"])
            except ValidationError as exc:
                log.warning("ignoring %s: its manifest's definition is not valid (%s)", folder,
                            exc.errors()[0]["msg"])
                return None
            return BuiltTemplate(Template(definition, folder), folder, manifest)
        try:  # built before manifests carried their definition
            template = self.definition(manifest["name"])
        except (TemplateNotFound, KeyError):
            return None
        if template.version != manifest.get("version"):
            return None
        return BuiltTemplate(template, folder, manifest)

    def _with_bases(self, built: BuiltTemplate, depth: int = 0) -> BuiltTemplate:
        """``built`` with its chain of bases resolved (or the reason it cannot be)."""
        record = built.manifest.get("base")
        if record is None:
            return built
        label = f"template {built.template.name} {built.template.version}"
        problem = None
        bases: tuple[BuiltTemplate, ...] = ()
        if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
            problem = f"{label}: its manifest's base record is damaged; rebuild it"
        elif depth >= MAX_LAYERS:
            problem = f"{label}: more than {MAX_LAYERS} layers deep; flatten it"
        else:
            name, version = str(record.get("name")), str(record.get("version"))
            folder = self.images / name / version
            base = self._from_manifest(folder) if (folder / MANIFEST).is_file() and \
                not name.startswith(".") and "/" not in name + version else None
            if base is None:
                problem = (f"{label} is a layer over {name} {version}, which is not installed; "
                           f"build or pull {name}@{version} (or import an archive that "
                           "includes it)")
            elif base.manifest.get("files") != record["files"]:
                problem = (f"{label} is a layer over {name} {version}, which was rebuilt or "
                           f"replaced since; rebuild it with `vboxlab templates build "
                           f"{built.template.name}`")
            else:
                base = self._with_bases(base, depth + 1)
                problem = base.base_problem
                bases = (base, *base.bases)
        return BuiltTemplate(built.template, built.folder, built.manifest, bases, problem)

    def dependents(self, name: str, version: str) -> list[BuiltTemplate]:
        """Installed templates that are layers directly over ``name`` ``version``."""
        return [b for b in self.installed() if b.base_ref == (name, version)]

    def built(self, request: str) -> BuiltTemplate:
        """The image for ``request`` (``tiny``, ``tiny@1.0.0``, ``debian-12>=1.1,<2``).

        A bare name means the version pinned for it (see :mod:`pins`), else the
        version its definition says, else (no definition here, say an imported
        template) the newest installed. The error lists what there is.
        """
        wanted = TemplateRequest.parse(request)
        pinned = read_pins().get(wanted.name)
        if wanted.spec is None and pinned is not None:
            wanted = TemplateRequest.parse(f"{wanted.name}=={pinned}")
        definitions = self.definitions()
        template = definitions.get(wanted.name)
        installed = self.installed(wanted.name)
        have = ", ".join(b.template.version for b in installed) or "none"
        if template is None and not installed:
            listed = ", ".join(sorted(set(definitions) | {b.template.name
                                                          for b in self.installed()})) or "none"
            where = ", ".join(str(p) for p in self.search) or "no template folders"
            raise TemplateNotFound(f"unknown template {wanted.name!r}; known templates: "
                                   f"{listed} (searched {where})")
        if wanted.spec is None and template is not None:
            chosen = [b for b in installed if b.template.version == template.version]
            if not chosen:
                raise TemplateNotBuilt(
                    f"template {wanted.name!r} ({template.version}) is not built yet; build it "
                    f"with `vboxlab templates build {wanted.name}` (or `make template`); "
                    f"installed versions: {have}")
        else:
            chosen = [b for b in installed if wanted.matches(b.template.version)]
            if not chosen:
                buildable = (f"; its definition ({template.version}) "
                             + ("matches: build it with `vboxlab templates build "
                                f"{wanted.name}`" if wanted.matches(template.version)
                                else "does not match either")) if template else ""
                raise TemplateNotBuilt(f"no installed version of {wanted.name!r} matches "
                                       f"{wanted}; installed: {have}{buildable}")
        built = chosen[-1]
        if built.base_problem is not None:
            raise TemplateNotBuilt(built.base_problem)
        if template is not None and built.template.version == template.version and \
                built.manifest.get("source_digest") not in (None, template.source_digest()) \
                and built.manifest.get("imported") is None:
            raise TemplateNotBuilt(
                f"template {wanted.name!r}: its definition in {template.folder} changed since "
                f"version {template.version} was built; rebuild it with `vboxlab templates "
                f"build {wanted.name}` (or give it a new version to keep the old one)")
        return built

    def status(self, name: str) -> str:
        """``built``, ``stale`` or ``not built`` (without asking apt)."""
        try:
            self.built(name)
        except TemplateNotBuilt as exc:
            return "stale" if "changed" in str(exc) else "not built"
        return "built"

    def remove(self, name: str, version: str) -> Path:
        """Delete one installed version; the folder it was in."""
        with self.lock(name):
            match = [b for b in self.installed(name) if b.template.version == version]
            if not match:
                have = ", ".join(b.template.version for b in self.installed(name)) or "none"
                raise TemplateNotBuilt(f"{name} {version} is not installed; installed: {have}")
            needed_by = self.dependents(name, version)
            if needed_by:
                listed = ", ".join(f"{b.template.name}@{b.template.version}" for b in needed_by)
                raise ConfigError(f"{name} {version} is the base of {listed}; remove "
                                  f"{'that' if len(needed_by) == 1 else 'those'} first "
                                  "(`vboxlab templates remove NAME@VERSION`)")
            folder = match[0].folder
            trash = folder.with_name(f".removing-{version}-{os.getpid()}")
            folder.rename(trash)  # gone from listings at once, even if the delete is cut short
            shutil.rmtree(trash)
            # the initrds its VMs shared (see vboxlab.providers.vmfiles)
            for shared in (self.cache / "initrds").glob(f"{name}-{version}-{'[0-9a-f]' * 16}.cpio"):
                shared.unlink(missing_ok=True)
            return folder

    def prune(self, *, dry_run: bool = False) -> list[BuiltTemplate]:
        """Remove installed versions that are neither pinned, the newest, nor the definition's."""
        pins = read_pins()
        definitions = self.definitions()
        doomed = []
        by_name: dict[str, list[BuiltTemplate]] = {}
        for built in self.installed():
            by_name.setdefault(built.template.name, []).append(built)
        for name, versions in by_name.items():
            keep = {versions[-1].template.version, pins.get(name)}
            if name in definitions:
                keep.add(definitions[name].version)
            doomed += [b for b in versions if b.template.version not in keep]
        def key(built: BuiltTemplate) -> tuple[str, str]:
            return built.template.name, built.template.version

        while True:  # a base stays while a template that stays is layered on it
            going = {key(b) for b in doomed}
            needed = {b.base_ref for b in self.installed() if key(b) not in going}
            if not any(key(b) in needed for b in doomed):
                break
            doomed = [b for b in doomed if key(b) not in needed]
        # layers before their bases
        doomed.sort(key=lambda b: -len(b.bases))
        if not dry_run:
            for built in doomed:
                self.remove(built.template.name, built.template.version)
        return doomed

    def outdated(self) -> list[tuple[str, str, str, str]]:
        """(name, pinned or in use, newest known, where the newest is) for each behind one."""
        rows = []
        pins = read_pins()
        definitions = self.definitions()
        names = sorted(set(pins) | set(definitions))
        for name in names:
            installed = [b.template.version for b in self.installed(name)]
            defined = definitions[name].version if name in definitions else None
            current = pins.get(name) or defined
            if current is None:
                continue
            candidates = installed + ([defined] if defined else [])
            best = newest(candidates)
            if best is not None and parse_version(best) > parse_version(current):
                where = "installed" if best in installed else "definition (not built)"
                rows.append((name, current + (" (pinned)" if name in pins else ""), best,
                             where))
        return rows

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
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

    def _drop_dead_builds(self, name: str) -> None:
        """Remove scratch folders of builds whose process died (killed, power cut)."""
        for scratch in (self.images / name).glob(".build-*"):
            pid = scratch.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not procs.is_alive(int(pid), None):
                log.info("removing %s, left by a build that did not finish", scratch)
                # its tools (dpkg-deb, debootstrap, mke2fs) may outlive it: stop them first
                for orphan in procs.pids_mentioning(str(scratch), cwd_too=True):
                    procs.kill(orphan, procs.start_time(orphan))
                shutil.rmtree(scratch, ignore_errors=True)
                if scratch.exists():
                    log.warning("could not remove %s completely", scratch)

    def build(self, name: str, *, force: bool = False,
              progress: Progress | None = None) -> tuple[BuiltTemplate, bool]:
        """Build ``name`` unless an image with the same inputs exists.

        Returns the image and whether a build ran. The build happens in a
        scratch folder renamed into place at the end, under a lock, so an
        interrupted build is never seen as usable and two builds never mix.
        """
        report = progress or (lambda step: log.info("%s: %s", name, step))
        template = self.definition(name)
        recipe = template.definition.build.recipe
        if recipe == "import":
            raise ConfigError(f"{name}: recipe 'import' is made by `vboxlab templates "
                              "import-image`, not built from a definition")
        packages: list[Package] = []
        base: BuiltTemplate | None = None
        if recipe == "initramfs":
            report("resolving Debian packages")
            packages = resolve_inputs(template)
            digest = inputs_digest(template, packages)
        elif recipe == "layer":
            base = self._base_for(template, report)
            template = Template(effective_definition(template.definition,
                                                     base.template.definition), template.folder)
            digest = layer.inputs_digest(template, base)
        else:
            digest = rootfs.inputs_digest(template)
        with self.lock(name):
            target = self.image_dir(template)
            manifest_path = target / MANIFEST
            if not force and manifest_path.is_file():
                manifest = json.loads(manifest_path.read_text())
                if manifest.get("inputs_digest") == digest:
                    return BuiltTemplate(template, target, manifest), False
            self._drop_dead_builds(name)
            scratch = self.images / name / f".build-{template.version}-{os.getpid()}"
            shutil.rmtree(scratch, ignore_errors=True)
            scratch.mkdir(parents=True)
            started = time.monotonic()
            try:
                if recipe == "initramfs":
                    extra = build_image(template, packages, scratch, self.cache / "debs", report)
                elif base is not None:
                    extra = layer.build_layer(template, base, scratch, self, report)
                else:
                    extra = rootfs.build_image(template, scratch, self.cache, report)
                manifest = {
                    "name": template.name,
                    "version": template.version,
                    "description": template.definition.description,
                    "inputs_digest": digest,
                    "source_digest": template.source_digest(),
                    "packages": [p.pin for p in packages],
                    "files": {p.name: file_sha256(p) for p in sorted(scratch.iterdir())
                              if p.is_file()},
                    "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_seconds": round(time.monotonic() - started, 1),
                    "builder": f"vboxlab {__version__}",
                    "origin": local_origin(),
                    "disk_format": "qcow2",
                    "definition": template.definition.model_dump(mode="json"),
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
            for stale in self.dependents(name, template.version):
                log.warning("%s %s is a layer over the %s %s just rebuilt: rebuild it too "
                            "(vboxlab templates build %s)", stale.template.name,
                            stale.template.version, name, template.version,
                            stale.template.name)
            return self._with_bases(BuiltTemplate(template, target, manifest)), True

    def _base_for(self, template: Template, report: Progress) -> BuiltTemplate:
        """The installed base a layer is built on, building it first from its definition
        when no installed version matches."""
        request = template.definition.base
        assert request is not None
        try:
            return self.built(request)
        except TemplateNotBuilt as exc:
            wanted = TemplateRequest.parse(request)
            definition = self.definitions().get(wanted.name)
            if definition is None or not wanted.matches(definition.version):
                raise TemplateNotBuilt(f"{template.name}: its base {request}: {exc}") from None
            report(f"building its base {wanted.name} {definition.version} first")
            self.build(wanted.name, progress=report)
            return self.built(f"{wanted.name}@{definition.version}")
