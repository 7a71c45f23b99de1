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
from vboxlab.templates.repository import MANIFEST, BuiltTemplate, TemplateRepository
from vboxlab.templates.trust import check_disk, check_manifest, local_origin
from vboxlab.templates.versions import parse_version

TOP = "vboxlab-template"
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


def export_template(built: BuiltTemplate, output: Path, *, level: int = 6) -> Path:
    """Write ``built`` (manifest + files) to ``output`` as one .tar.gz; returns it."""
    output = Path(output)
    partial = output.with_name(f".{output.name}.partial")
    files = built.manifest.get("files", {})
    try:
        with gzip.open(partial, "wb", compresslevel=level) as zipped, \
                tarfile.open(fileobj=zipped, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in [MANIFEST, *sorted(files)]:
                source = built.folder / name
                info = tarfile.TarInfo(f"{TOP}/{name}")
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


def _member_name(member: tarfile.TarInfo, seen: set[str]) -> str:
    """The file name inside TOP, after refusing everything an archive must not hold."""
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
    if len(path.parts) != 2 or path.parts[0] != TOP:
        raise ArchiveError(f"entry {raw!r} is outside {TOP}/")
    if raw in seen:
        raise ArchiveError(f"entry {raw!r} appears twice")
    seen.add(raw)
    return path.parts[1]


def import_template(archive: Path, repository: TemplateRepository, *,
                    force: bool = False) -> ImportResult:
    """Verify and install an archive; raises ArchiveError naming what is wrong."""
    archive = Path(archive)
    if not archive.is_file():
        raise HostFileNotFound(f"{archive}: no such archive")
    scratch = new_scratch(repository)
    try:
        manifest, files = _unpack(archive, scratch)
        return install_verified(scratch, manifest, files, repository, source=archive.name,
                                force=force)
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
        check_disk(scratch / "disk.qcow2", str(manifest.get("disk_format", "qcow2")),
                   what=what)
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


def _unpack(archive: Path, scratch: Path) -> tuple[dict[str, Any], dict[str, str]]:
    seen: set[str] = set()
    manifest: dict[str, Any] | None = None
    written: set[str] = set()
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = _member_name(member, seen)
                stream = tar.extractfile(member)
                if stream is None:
                    raise ArchiveError(f"entry {member.name!r} has no data")
                if manifest is None:
                    if name != MANIFEST:
                        raise ArchiveError(f"the first entry must be {TOP}/{MANIFEST}, "
                                           f"not {member.name!r}")
                    try:
                        manifest = check_archive_manifest(json.loads(stream.read(1 << 20)))
                    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8
                        raise ArchiveError(f"manifest.json is not valid JSON: {exc}") from None
                    continue
                files: dict[str, str] = manifest["files"]
                if name not in files:
                    raise ArchiveError(f"entry {member.name!r} is not listed in the manifest")
                free = shutil.disk_usage(scratch).free
                if member.size > free - FREE_SPACE_RESERVE:
                    raise ArchiveError(
                        f"entry {member.name!r} is {member.size >> 20} MiB but the template "
                        f"cache ({scratch.parent}) has {free >> 20} MiB free (and keeps "
                        f"{FREE_SPACE_RESERVE >> 20} MiB in reserve); free some space or move "
                        "the cache with VBOXLAB_CACHE")
                digest = copy_hashing(stream, scratch / name)
                if digest != files[name]:
                    raise ArchiveError(f"{name}: SHA-256 {digest} does not match the manifest's "
                                       f"{files[name]}: the archive is corrupted or was "
                                       "tampered with")
                written.add(name)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
        raise ArchiveError(f"{archive}: not a readable template archive ({exc})") from None
    if manifest is None:
        raise ArchiveError(f"{archive}: empty archive (no {TOP}/{MANIFEST})")
    missing = sorted(set(manifest["files"]) - written)
    if missing:
        raise ArchiveError(f"{archive}: files listed in the manifest are missing: "
                           f"{', '.join(missing)}")
    return manifest, dict(manifest["files"])


def copy_hashing(stream: IO[bytes], target: Path) -> str:
    """Copy ``stream`` into a new file ``target``; returns the SHA-256 of what was copied."""
    digest = hashlib.sha256()
    with target.open("xb") as out:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()
