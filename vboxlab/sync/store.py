"""Templates on a remote as content-addressed blobs: ``vboxlab sync push|pull``.

Layout under the remote's path::

    blobs/SHA256                         every file of every template, named by its digest
    templates/NAME/VERSION/manifest.sig  who signed the manifest (ed25519, see signing.py)
    templates/NAME/VERSION/manifest.json written last: a template is visible when complete
    keys/FINGERPRINT.pub                 the team's public keys (``vboxlab keys publish``)
    log/TIME-RANDOM.json                 one signed entry per push, never rewritten: the log

Push sends only the blobs the remote lacks (a blob is uploaded under a
``.partial`` name, its size checked, then renamed; on S3, where an object
appears whole or not at all, under its own name), then the manifest. Pull
reads the manifest (checked like an archive's), takes each file from a local
template that already has that digest or from the remote, verifies every
SHA-256 while writing into a scratch folder, and installs the template through
the same trust checks as an archive import (its disk checked, marked foreign
when built elsewhere). An interrupted push leaves blobs without a manifest (the
next push skips them); an interrupted pull leaves nothing installed. The same
name and version with other contents on both sides is a conflict: refused with
both digests, never overwritten. Pull checks the manifest's signature against
the keys this machine trusts and refuses unsigned or untrusted manifests unless
told to take them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import posixpath
import re
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from vboxlab.errors import ConfigError, HostError, VboxlabError
from vboxlab.names import is_valid_name
from vboxlab.sync.remotes import Remote
from vboxlab.sync.signing import (
    PublicKey,
    SignatureError,
    SigningKey,
    TrustStore,
    default_signer_name,
    read_signature,
)
from vboxlab.templates.archive import (
    FREE_SPACE_RESERVE,
    ArchiveError,
    check_archive_manifest,
    copy_hashing,
    install_verified,
    new_scratch,
)
from vboxlab.templates.repository import MANIFEST, MAX_LAYERS, BuiltTemplate, TemplateRepository

Progress = Callable[[str], None]
T = TypeVar("T")
SFTP_BLOCK = 255 * 1024
S3_PART = 16 << 20
SIGNATURE = "manifest.sig"
_MAX_SMALL_FILE = 1 << 20


class SyncError(VboxlabError):
    """A transfer that cannot be done: a conflict, a damaged blob, a bad manifest."""


@dataclass(frozen=True)
class Transfer:
    """What one push or pull of one template moved."""

    name: str
    version: str
    files: int
    moved_files: int
    moved_bytes: int
    already: bool

    def describe(self, verb: str) -> str:
        if self.already:
            return f"{self.name} {self.version}: already there, nothing {verb}"
        return (f"{verb} {self.name} {self.version}: {self.moved_files} of {self.files} files, "
                f"{self.moved_bytes / 1e6:.1f} MB")


@dataclass(frozen=True)
class LogEntry:
    """One push as the remote's log records it, and whether its signature holds."""

    time: float
    action: str
    subject: str
    contents: str
    signer: str
    fingerprint: str
    user: str
    trusted: bool | None  # None: unsigned or signature broken


def contents_digest(files: dict[str, str]) -> str:
    """One digest for a template's files (names and SHA-256s): its contents' identity."""
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def _quiet(_: str) -> None:
    pass


def _remote_errors(method: Callable[..., T]) -> Callable[..., T]:
    """The remote's refusals (credentials, permissions) as one clear HostError."""

    @functools.wraps(method)
    def wrapper(self: TemplateStore, *args: Any, **kwargs: Any) -> T:
        try:
            return method(self, *args, **kwargs)
        except PermissionError as exc:
            raise HostError(f"{self.remote.url} refused the request: {exc} (check the "
                            "credentials: for S3 the AWS_* variables or ~/.aws, for SFTP "
                            "the key)") from None

    return wrapper


class TemplateStore:
    """One remote's templates (see the module's docstring)."""

    def __init__(self, remote: Remote, fs: Any = None) -> None:
        self.remote = remote
        self.fs = fs if fs is not None else remote.filesystem()
        self.root = remote.root
        #: SFTP: requests of 255 KiB (OpenSSH's sftp-server takes messages up to 256 KiB)
        #: instead of the default 16 KiB; 2x faster on a 700 MB disk image here
        self._transfer_options: dict[str, Any] = \
            {"block_size": SFTP_BLOCK} if remote.scheme == "sftp" else {}

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def _manifest_path(self, name: str, version: str) -> str:
        if not is_valid_name(name) or not re.fullmatch(r"\d{1,9}\.\d{1,9}\.\d{1,9}", version):
            raise SyncError(f"{self.remote.url}: {name!r} {version!r} is not a template name "
                            "and version")
        return self.path("templates", name, version, MANIFEST)

    # -- reading --------------------------------------------------------
    @_remote_errors
    def templates(self) -> list[tuple[str, str]]:
        """(name, version) of every complete template on the remote."""
        found = []
        for path in self.fs.glob(self.path("templates", "*", "*", MANIFEST)):
            version_dir = posixpath.dirname(str(path))
            found.append((posixpath.basename(posixpath.dirname(version_dir)),
                          posixpath.basename(version_dir)))
        return sorted(found)

    def read_small(self, path: str) -> bytes | None:
        """A remote file of at most 1 MiB (manifests, signatures, keys), or None if absent."""
        if not self.fs.exists(path):
            return None
        if int(self.fs.size(path)) > _MAX_SMALL_FILE:
            raise SyncError(f"{self.remote.url}: {path} is over 1 MiB; not written by vboxlab")
        return bytes(self.fs.cat_file(path))

    def write_small(self, path: str, data: bytes) -> None:
        """Write a small file so that it appears whole (renamed into place; S3: one PUT)."""
        self.fs.makedirs(posixpath.dirname(path), exist_ok=True)
        if self.remote.scheme == "s3":
            self.fs.pipe_file(path, data)
            return
        partial = posixpath.join(posixpath.dirname(path),
                                 f".{posixpath.basename(path)}.{secrets.token_hex(4)}.partial")
        self.fs.pipe_file(partial, data)
        self.fs.mv(partial, path)

    @_remote_errors
    def manifest(self, name: str, version: str) -> dict[str, Any] | None:
        """The remote's manifest of ``name`` ``version`` (checked), or None."""
        found = self._manifest_with_bytes(name, version)
        return None if found is None else found[0]

    def _manifest_with_bytes(self, name: str, version: str) -> tuple[dict[str, Any],
                                                                        bytes] | None:
        path = self._manifest_path(name, version)
        raw = self.read_small(path)
        if raw is None:
            return None
        try:
            manifest = check_archive_manifest(json.loads(raw))
        except (ValueError, ArchiveError) as exc:
            raise SyncError(f"{self.remote.url}: {path}: {exc}") from None
        if (manifest["name"], manifest["version"]) != (name, version):
            raise SyncError(f"{self.remote.url}: {path} describes {manifest['name']} "
                            f"{manifest['version']}, not {name} {version}")
        return manifest, raw

    def signer_of(self, name: str, version: str, trust: TrustStore) -> PublicKey:
        """The trusted key that signed ``name`` ``version``'s manifest (SignatureError if
        unsigned, altered or untrusted)."""
        found = self._manifest_with_bytes(name, version)
        if found is None:
            raise ConfigError(f"{self.remote.url} has no template {name} {version}")
        return self._check_signature(name, version, found[1], trust)

    def _check_signature(self, name: str, version: str, manifest: bytes,
                         trust: TrustStore) -> PublicKey:
        return self.check_signature(manifest, self.path("templates", name, version, SIGNATURE),
                                    "manifest", trust, f"{name} {version} on {self.remote.url}")

    def check_signature(self, data: bytes, signature_path: str, purpose: str,
                        trust: TrustStore, where: str) -> PublicKey:
        """The trusted key whose signature at ``signature_path`` covers ``data``."""
        raw_sig = self.read_small(signature_path)
        try:
            document = None if raw_sig is None else json.loads(raw_sig)
        except ValueError:
            raise SignatureError(f"{where}: its signature is not JSON") from None
        return trust.check(document, purpose, data, where)

    # -- team keys and the log ---------------------------------------------
    @_remote_errors
    def publish_key(self, key: PublicKey) -> bool:
        """Put ``key`` in the remote's list of team keys; False if it was there."""
        path = self.path("keys", _key_file(key))
        if self.fs.exists(path):
            return False
        self.write_small(path, (key.line + "\n").encode())
        return True

    @_remote_errors
    def team_keys(self) -> list[PublicKey]:
        """The public keys listed on the remote (each file checked)."""
        keys = []
        for path in sorted(self.fs.glob(self.path("keys", "*.pub"))):
            raw = self.read_small(str(path)) or b""
            key = PublicKey.parse_line(raw.decode(errors="replace"),
                                       f"{self.remote.url}: {path}")
            if _key_file(key) != posixpath.basename(str(path)):
                raise SyncError(f"{self.remote.url}: {path} holds a key of another "
                                f"fingerprint ({key.fingerprint}); remove that file")
            keys.append(key)
        return keys

    def log_event(self, action: str, subject: str, contents: str,
                  signer: SigningKey | None) -> None:
        """Append one signed entry to the remote's log (a new file, never rewritten)."""
        now = time.time()
        entry = {"time": now, "action": action, "subject": subject,
                 "contents": contents, "user": default_signer_name(), "pid": os.getpid()}
        data = json.dumps(entry, sort_keys=True).encode()
        record = {"entry": entry,
                  "signature": signer.sign("log", data) if signer is not None else None}
        # microseconds too: names sort in the order the entries were made
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + \
            f".{int(now * 1e6) % 1_000_000:06d}"
        self.write_small(self.path("log", f"{stamp}-{secrets.token_hex(6)}.json"),
                             (json.dumps(record, sort_keys=True) + "\n").encode())

    @_remote_errors
    def log(self, trust: TrustStore) -> list[LogEntry]:
        """Every entry of the remote's log, oldest first, each with its signature checked."""
        entries = []
        for path in self.fs.glob(self.path("log", "*.json")):
            where = f"{self.remote.url}: {path}"
            try:
                record = json.loads(self.read_small(str(path)) or b"")
                entry = record["entry"]
                data = json.dumps(entry, sort_keys=True).encode()
                fields = (float(entry["time"]), str(entry["action"]), str(entry["subject"]),
                          str(entry["contents"]), str(entry["user"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise SyncError(f"{where}: not a log entry ({exc})") from None
            signer, fingerprint, trusted = "-", "-", None
            if record.get("signature") is not None:
                key, signature = read_signature(record["signature"], where)
                signer, fingerprint = key.name, key.fingerprint
                if key.verify(signature, "log", data):
                    trusted = key.fingerprint in trust.keys()  # noqa: SIM118 (a method)
            entries.append(LogEntry(fields[0], fields[1], fields[2], fields[3], signer,
                                    fingerprint, fields[4], trusted))
        return sorted(entries, key=lambda e: e.time)

    # -- push -----------------------------------------------------------
    @_remote_errors
    def push(self, built: BuiltTemplate, signer: SigningKey | None,
             progress: Progress = _quiet) -> Transfer:
        """Send ``built``: missing blobs first, then its signature (by ``signer``; None:
        unsigned), the manifest last, and an entry in the remote's log. A layer's bases
        go first (each as a template of its own), so the remote never lists a layer whose
        base it lacks."""
        name, version = built.template.name, built.template.version
        if built.bases:
            self.push(built.bases[0], signer, progress)
        files: dict[str, str] = dict(built.manifest.get("files", {}))
        theirs = self.manifest(name, version)
        if theirs is not None:
            if theirs["files"] == files:
                return Transfer(name, version, len(files), 0, 0, True)
            raise SyncError(
                f"{name} {version} differs on {self.remote.url}: the remote holds contents "
                f"{contents_digest(theirs['files'])[:16]}..., this machine "
                f"{contents_digest(files)[:16]}...; refusing to overwrite (give your build a "
                "new version, or pull theirs after removing yours)")
        moved = moved_bytes = 0
        for file, digest in sorted(files.items()):
            sent = self.send_blob(built.folder / file, digest,
                                  f"{name} {version}: sending {file}", progress)
            if sent:
                moved += 1
                moved_bytes += sent
        shared = {k: v for k, v in built.manifest.items() if k not in ("imported", "signed_by")}
        text = (json.dumps(shared, indent=2) + "\n").encode()
        signature_path = self.path("templates", name, version, SIGNATURE)
        if signer is not None:
            self.write_small(signature_path, json.dumps(signer.sign("manifest", text),
                                                            indent=2).encode())
        elif self.fs.exists(signature_path):  # left by an earlier, interrupted push
            self.fs.rm(signature_path)
        self.write_small(self._manifest_path(name, version), text)
        self.log_event("push", f"{name}@{version}", contents_digest(files), signer)
        return Transfer(name, version, len(files), moved, moved_bytes, False)

    def send_blob(self, local: Path, digest: str, what: str, progress: Progress = _quiet) -> int:
        """Upload ``local`` as blob ``digest`` unless the remote has it; returns bytes sent."""
        blob = self.path("blobs", digest)
        if self.fs.exists(blob):
            return 0
        self.fs.makedirs(self.path("blobs"), exist_ok=True)
        size = local.stat().st_size
        progress(f"{what} ({size / 1e6:.1f} MB)")
        if self.remote.scheme == "s3":  # an object appears whole or not at all
            # 16 MiB parts, 4 at a time (s3fs: 50 MiB, 10): steadier here, as rclone does
            self.fs.put_file(str(local), blob, chunksize=S3_PART, max_concurrency=4)
            partial = blob
        else:
            partial = self.path("blobs", f".partial-{digest}")
            self.fs.put_file(str(local), partial, **self._transfer_options)
        arrived = self.fs.size(partial)
        if arrived != size:
            self.fs.rm(partial)
            raise SyncError(f"{self.remote.url}: {what}: arrived with {arrived} bytes, "
                            f"not {size}")
        if partial != blob:
            self.fs.mv(partial, blob)
        return size

    # -- pull -----------------------------------------------------------
    @_remote_errors
    def pull(self, name: str, version: str, repository: TemplateRepository,
             trust: TrustStore | None, progress: Progress = _quiet, *,
             depth: int = 0) -> Transfer:
        """Fetch ``name`` ``version`` into ``repository`` (verified, installed whole); its
        manifest must be signed by a key ``trust`` holds (None: take it unsigned)."""
        found = self._manifest_with_bytes(name, version)
        if found is None:
            raise ConfigError(f"{self.remote.url} has no template {name} {version}; it has: "
                              + (", ".join(f"{n}@{v}" for n, v in self.templates()) or "none"))
        manifest, raw = found
        signer = (self._check_signature(name, version, raw, trust) if trust is not None
                  else None)
        files: dict[str, str] = manifest["files"]
        base = manifest.get("base")
        if isinstance(base, dict) and is_valid_name(base.get("name")) and \
                isinstance(base.get("version"), str) and \
                re.fullmatch(r"\d{1,9}\.\d{1,9}\.\d{1,9}", base["version"]) and \
                depth < MAX_LAYERS and not any(
                    b.template.version == base["version"]
                    for b in repository.installed(base["name"])):
            progress(f"{name} {version} is a layer over {base['name']} {base['version']}: "
                     "pulling that first")
            self.pull(base["name"], base["version"], repository, trust, progress,
                      depth=depth + 1)
        for mine in repository.installed(name):
            if mine.template.version == version:
                if mine.manifest.get("files") == files:
                    return Transfer(name, version, len(files), 0, 0, True)
                raise SyncError(
                    f"{name} {version} differs on {self.remote.url}: the remote holds contents "
                    f"{contents_digest(files)[:16]}..., this machine "
                    f"{contents_digest(mine.manifest.get('files', {}))[:16]}...; refusing to "
                    f"overwrite (vboxlab templates remove {name}@{version} first to take "
                    "theirs)")
        have = {digest: built.folder / file for built in repository.installed()
                for file, digest in built.manifest.get("files", {}).items()}
        incoming = sum(int(self.fs.size(self.path("blobs", d))) for d in files.values()
                       if d not in have)
        repository.images.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(repository.images).free - FREE_SPACE_RESERVE
        if incoming > free:
            raise SyncError(f"{name} {version} from {self.remote.url} needs {incoming / 1e6:.0f} "
                            f"MB and {repository.images} has {max(0, free) / 1e6:.0f} MB to "
                            "spare; nothing fetched")
        scratch = new_scratch(repository)
        moved = moved_bytes = 0
        try:
            for file, digest in sorted(files.items()):
                target = scratch / file
                if digest in have and have[digest].is_file():
                    with have[digest].open("rb") as stream:
                        got = copy_hashing(stream, target)
                else:
                    progress(f"{name} {version}: fetching {file}")
                    with self.fs.open(self.path("blobs", digest), "rb",
                                      **self._transfer_options) as stream:
                        got = copy_hashing(stream, target)
                    moved += 1
                    moved_bytes += target.stat().st_size
                if got != digest:
                    raise SyncError(f"{self.remote.url}: {file} of {name} {version} has SHA-256 "
                                    f"{got}, not {digest} as its manifest says; not installed")
            if signer is not None:
                manifest = {**manifest, "signed_by": {"name": signer.name,
                                                      "fingerprint": signer.fingerprint}}
            try:
                install_verified(scratch, manifest, files, repository, source=self.remote.url)
            except ArchiveError as exc:
                raise SyncError(str(exc)) from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return Transfer(name, version, len(files), moved, moved_bytes, False)


def _key_file(key: PublicKey) -> str:
    return hashlib.sha256(key.raw).hexdigest()[:32] + ".pub"


def select(requests: list[str], available: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``NAME`` or ``NAME@VERSION`` requests matched against (name, version) pairs; none
    given: all of them."""
    if not requests:
        return list(available)
    chosen = []
    for request in requests:
        name, _, version = request.partition("@")
        matches = [(n, v) for n, v in available if n == name and (not version or v == version)]
        if not matches:
            raise ConfigError(f"no template {request}; there are: "
                              + (", ".join(f"{n}@{v}" for n, v in available) or "none"))
        chosen += [m for m in matches if m not in chosen]
    return chosen


def local_templates(repository: TemplateRepository) -> list[tuple[str, str]]:
    return [(b.template.name, b.template.version) for b in repository.installed()]


def built_by_version(repository: TemplateRepository, name: str, version: str) -> BuiltTemplate:
    for built in repository.installed(name):
        if built.template.version == version:
            return built
    raise ConfigError(f"template {name} {version} is not built here")
