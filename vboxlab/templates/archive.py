"""Template archives: one compressed file (tar + gzip) that carries a built template.

Layout: ``vboxlab-template/manifest.json`` first, then ``vboxlab-template/<file>``
for every file the manifest lists with its SHA-256. Import trusts nothing: it
refuses absolute paths, ``..``, links of any kind, devices, duplicate entries,
files the manifest does not list and files it lists that are missing; every
checksum is verified while the file is written into a scratch folder. Then the
template itself is checked (:mod:`vboxlab.templates.trust`): its disk must be a
self-contained image of the manifest's format (no backing or data file), its
definition must carry the manifest's name and version, and the kernel, initrd
and disk must be listed. Only a complete, verified template is renamed into the
repository, marked with where it came from: a template built on another
machine boots with its user network restricted unless a lab says otherwise.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from vboxlab.errors import ConfigError, HostFileNotFound, UntrustedImage
from vboxlab.names import is_valid_name
from vboxlab.templates.chain import check_incoming_disk
from vboxlab.templates.repository import (
    MANIFEST,
    MAX_LAYERS,
    BuiltTemplate,
    TemplateRepository,
)
from vboxlab.templates.trust import check_manifest, local_origin
from vboxlab.templates.versions import parse_version

TOP = "vboxlab-template"
#: the sections of a layer's bases in an archive made ``with_bases``: vboxlab-base-1, ...
BASE_TOP = "vboxlab-base-"
_TOPS = re.compile(rf"^(?:{TOP}|{BASE_TOP}[1-{MAX_LAYERS}])$")
#: what an import leaves free on the cache's disk at the least
FREE_SPACE_RESERVE = 256 << 20
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")


class ArchiveError(UntrustedImage):
    """An archive that cannot be imported (bad, tampered or incomplete)."""


@dataclass(frozen=True)
class ImportResult:
    name: str
    version: str
    folder: Path
    already_present: bool


def export_template(built: BuiltTemplate, output: Path, *, level: int = 6,
                    with_bases: bool = False) -> Path:
    """Write ``built`` (manifest + files) to ``output`` as one .tar.gz; returns it.

    A layer's archive names its base by the base's file digests; ``with_bases`` puts the
    bases in too (``vboxlab-base-N/``, the deepest first), so it imports on its own.
    """
    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    sections = [(f"{BASE_TOP}{depth}", base) for depth, base in
                reversed(list(enumerate(built.bases, 1)))] if with_bases else []
    sections.append((TOP, built))
    try:
        with gzip.open(partial, "wb", compresslevel=level) as zipped, \
                tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for top, each in sections:
                for name in [MANIFEST, *sorted(each.manifest.get("files", {}))]:
                    source = each.folder / name
                    info = tarfile.TarInfo(f"{top}/{name}")
                    info.size = source.stat().st_size
                    info.mtime = int(source.stat().st_mtime)
                    info.mode = 0o644
                    with source.open("rb") as handle:
                        tar.addfile(info, handle)
        partial.replace(output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return output


def check_archive_manifest(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ArchiveError("manifest.json is not a JSON object")
    name, version, files = data.get("name"), data.get("version"), data.get("files")
    if not is_valid_name(name):
        raise ArchiveError(f"manifest.json: name {name!r} is not a template name")
    if not isinstance(version, str) or not re.fullmatch(r"\d{1,9}\.\d{1,9}\.\d{1,9}", version):
        raise ArchiveError(f"manifest.json: version {version!r} is not a version such as "
                           "1.0.0")
    try:
        parse_version(version)
    except ConfigError as exc:
        raise ArchiveError(f"manifest.json: {exc}") from None
    if not isinstance(files, dict) or not files:
        raise ArchiveError("manifest.json: no files listed")
    for file, digest in files.items():
        if not isinstance(file, str) or not _FILE.fullmatch(file) or file == MANIFEST:
            raise ArchiveError(f"manifest.json lists a bad file name {file!r}")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise ArchiveError(f"manifest.json: {file}: {digest!r} is not a SHA-256")
    return data


def _member_name(member: tarfile.TarInfo, seen: set[str]) -> tuple[str, str]:
    """(section, file name) of an entry, after refusing everything an archive must not
    hold; the section is TOP or a base's."""
    raw = member.name
    path = PurePosixPath(raw)
    if raw.startswith("/") or path.is_absolute():
        raise ArchiveError(f"entry {raw!r} has an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"entry {raw!r} climbs out with '..'")
    if member.issym() or member.islnk():
        raise ArchiveError(f"entry {raw!r} is a link (to {member.linkname!r}); template archives "
                           "hold plain files only")
    if not member.isfile():
        raise ArchiveError(f"entry {raw!r} is not a regular file")
    if len(path.parts) != 2 or not _TOPS.fullmatch(path.parts[0]):
        raise ArchiveError(f"entry {raw!r} is outside {TOP}/ (and the {BASE_TOP}N/ of a "
                           "layer's bases)")
    if raw in seen:
        raise ArchiveError(f"entry {raw!r} appears twice")
    seen.add(raw)
    return path.parts[0], path.parts[1]


def import_template(archive: Path, repository: TemplateRepository, *,
                    force: bool = False) -> ImportResult:
    """Verify and install an archive; raises ArchiveError naming what is wrong."""
    archive = Path(archive)
    if not archive.is_file():
        raise HostFileNotFound(f"{archive}: no such archive")
    scratch = new_scratch(repository)
    try:
        sections = _unpack(archive, scratch)
        for top, manifest in sections[:-1]:  # a layer's bases, the deepest first
            install_verified(scratch / top, manifest, dict(manifest["files"]), repository,
                             source=archive.name)
        top, manifest = sections[-1]
        return install_verified(scratch / top, manifest, dict(manifest["files"]), repository,
                                source=archive.name, force=force)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def new_scratch(repository: TemplateRepository) -> Path:
    """A private folder in the repository to gather a template in before it is installed."""
    scratch = repository.images / f".import-{os.getpid()}-{time.monotonic_ns()}"
    scratch.mkdir(parents=True)
    return scratch


def install_verified(scratch: Path, manifest: dict[str, Any], files: dict[str, str],
                     repository: TemplateRepository, *, source: str,
                     force: bool = False) -> ImportResult:
    """Install the template gathered in ``scratch`` (every file already checked against the
    manifest's SHA-256) once the template itself passes the trust checks; ``source`` says
    where it came from. The same name and version with other files is refused unless
    ``force``."""
    name, version = manifest["name"], manifest["version"]
    what = f"{source} ({name} {version})"
    try:
        check_manifest(manifest, what=what)
        check_incoming_disk(scratch / "disk.qcow2", manifest, repository, what=what)
    except UntrustedImage as exc:
        raise ArchiveError(str(exc)) from None
    manifest["imported"] = {"from": source, "at": time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "foreign": manifest.get("origin") != local_origin()}
    (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with repository.lock(name):
        target = repository.images / name / version
        if (target / MANIFEST).is_file():
            present = json.loads((target / MANIFEST).read_text()).get("files")
            if present == files:
                return ImportResult(name, version, target, True)
            if not force:
                raise ArchiveError(f"{name} {version} is already installed with different "
                                   "files; remove it first (vboxlab templates remove "
                                   f"{name}@{version}) or import with --force")
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch.rename(target)
    return ImportResult(name, version, target, False)


def _unpack(archive: Path, scratch: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every section's files into ``scratch/SECTION/``, each checked against its
    manifest; (section, manifest) in archive order, the template's last."""
    seen: set[str] = set()
    sections: list[tuple[str, dict[str, Any]]] = []
    written: set[str] = set()
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                top, name = _member_name(member, seen)
                stream = tar.extractfile(member)
                if stream is None:
                    raise ArchiveError(f"entry {member.name!r} has no data")
                if not sections or sections[-1][0] != top:
                    if name != MANIFEST:
                        raise ArchiveError(f"the first entry of {top}/ must be {top}/"
                                           f"{MANIFEST}, not {member.name!r}")
                    if sections:
                        _check_complete(archive, *sections[-1], written)
                    if sections and sections[-1][0] == TOP:
                        raise ArchiveError(f"entry {member.name!r} follows {TOP}/, which "
                                           "must come last")
                    if any(top == done for done, _ in sections):
                        raise ArchiveError(f"{top}/ appears twice")
                    try:
                        manifest = check_archive_manifest(json.loads(stream.read(1 << 20)))
                    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
                        raise ArchiveError(f"{top}/manifest.json is not valid JSON: "
                                           f"{exc}") from None
                    sections.append((top, manifest))
                    written = set()
                    (scratch / top).mkdir()
                    continue
                if name == MANIFEST:
                    raise ArchiveError(f"entry {member.name!r} appears twice")
                files: dict[str, str] = sections[-1][1]["files"]
                if name not in files:
                    raise ArchiveError(f"entry {member.name!r} is not listed in the manifest")
                free = shutil.disk_usage(scratch).free
                if member.size > free - FREE_SPACE_RESERVE:
                    raise ArchiveError(
                        f"entry {member.name!r} is {member.size >> 20} MiB but the template "
                        f"cache ({scratch.parent}) has {free >> 20} MiB free (and keeps "
                        f"{FREE_SPACE_RESERVE >> 20} MiB in reserve); free some space or move "
                        "the cache with VBOXLAB_CACHE")
                digest = copy_hashing(stream, scratch / top / name)
                if digest != files[name]:
                    raise ArchiveError(f"{name}: SHA-256 {digest} does not match the manifest's "
                                       f"{files[name]}: the archive is corrupted or was "
                                       "tampered with")
                written.add(name)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable template archive ({exc})") from None
    if not sections or sections[-1][0] != TOP:
        raise ArchiveError(f"{archive}: no {TOP}/{MANIFEST} (or not last): not a template "
                           "archive")
    _check_complete(archive, *sections[-1], written)
    return sections


def _check_complete(archive: Path, top: str, manifest: dict[str, Any],
                    written: set[str]) -> None:
    missing = sorted(set(manifest["files"]) - written)
    if missing:
        raise ArchiveError(f"{archive}: files listed in {top}/{MANIFEST} are missing: "
                           f"{', '.join(missing)}")


def copy_hashing(stream: IO[bytes], target: Path) -> str:
    """Copy ``stream`` into a new file ``target``; returns the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with target.open("xb") as out:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
