"""A project's shared files on a remote: template pins, topologies and compliance profiles.

``vboxlab sync project push|pull`` moves the files a team shares
(``vboxlab-templates.lock``, ``topologies/**.yaml``, ``profiles/**.yaml``) as
blobs beside the templates' ones, under one signed manifest per project::

    projects/NAME/manifest.json     {"name", "files": {path: sha256}, "parent": digest}
    projects/NAME/manifest.sig      who signed it
    projects/NAME/history/DIGEST.json  every manifest ever pushed (never rewritten)

Each side remembers the manifest it last synced (``.vboxlab/sync.json`` in the
project), which makes both directions safe like a fast-forward: a push is
refused while the remote holds changes this copy has not pulled, and a pull is
refused (nothing written) where a file was changed here since the last sync and
differs from the remote's, naming each such file with both digests. Paths in a
remote manifest are untrusted: only the shared patterns, relative, without
``..`` or links, each file at most 1 MiB.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vboxlab.errors import ConfigError
from vboxlab.names import is_valid_name
from vboxlab.sync.signing import SigningKey, TrustStore
from vboxlab.sync.store import SyncError, TemplateStore, contents_digest
from vboxlab.templates.pins import PINS_FILE

SHARED = re.compile(rf"^(?:{re.escape(PINS_FILE)}|(?:topologies|profiles)/(?:[A-Za-z0-9_.-]+/)*"
                    r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.ya?ml)$")
MAX_FILE = 1 << 20
STATE = Path(".vboxlab") / "sync.json"


@dataclass(frozen=True)
class ProjectSync:
    """What one push or pull of a project changed."""

    name: str
    changed: tuple[str, ...]
    removed: tuple[str, ...]
    manifest: str

    def describe(self, verb: str) -> str:
        if not self.changed and not self.removed:
            return f"project {self.name}: up to date"
        parts = [f"{len(self.changed)} file(s) {verb}"]
        if self.removed:
            parts.append(f"{len(self.removed)} removed")
        return f"project {self.name}: {', '.join(parts)}: " + ", ".join(
            [*self.changed, *(f"-{r}" for r in self.removed)])


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def shared_files(root: Path) -> dict[str, str]:
    """Path -> SHA-256 of every shared file in the project at ``root`` (links refused)."""
    found: dict[str, str] = {}
    candidates = [root / PINS_FILE, *(root / "topologies").rglob("*"),
                  *(root / "profiles").rglob("*")]
    for path in candidates:
        if not path.exists() and not path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise ConfigError(f"{path} is a symbolic link; shared project files must be "
                              "plain files")
        if not path.is_file() or not SHARED.match(rel):
            continue
        if path.stat().st_size > MAX_FILE:
            raise ConfigError(f"{path} is over 1 MiB; project sync carries pins, topologies "
                              "and profiles, not data")
        found[rel] = _sha256(path.read_bytes())
    return dict(sorted(found.items()))


def _check_manifest(raw: bytes, name: str, where: str) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads(raw)
    except ValueError:
        raise SyncError(f"{where}: the project manifest is not JSON") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("name") != name:
        raise SyncError(f"{where}: not the manifest of project {name}")
    for rel, digest in files.items():
        parts = PurePosixPath(rel).parts
        if not isinstance(rel, str) or not SHARED.match(rel) or ".." in parts or \
                not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise SyncError(f"{where}: entry {rel!r} is not a shared project file with a "
                            "SHA-256 (pins, topologies/*.yaml, profiles/*.yaml)")
    return manifest


class ProjectStore:
    """Projects on one remote (the same remote and blobs as its templates)."""

    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    def _paths(self, name: str) -> tuple[str, str]:
        if not is_valid_name(name):
            raise ConfigError(f"project name {name!r}: use lowercase letters, digits and "
                              "dashes (--name)")
        return (self.store.path("projects", name, "manifest.json"),
                self.store.path("projects", name, "manifest.sig"))

    def remote_manifest(self, name: str) -> tuple[dict[str, Any], bytes] | None:
        manifest_path, _ = self._paths(name)
        raw = self.store.read_small(manifest_path)
        if raw is None:
            return None
        return _check_manifest(raw, name, f"{self.store.remote.url}: {manifest_path}"), raw

    def _history(self, name: str, digest: str) -> dict[str, Any] | None:
        if not re.fullmatch(r"[0-9a-f]{64}", digest):
            return None
        raw = self.store.read_small(self.store.path("projects", name, "history",
                                                    f"{digest}.json"))
        if raw is None or _sha256(raw) != digest:
            return None
        return _check_manifest(raw, name, f"{self.store.remote.url}: history {digest[:12]}")

    # -- push -----------------------------------------------------------
    def push(self, root: Path, name: str, signer: SigningKey | None) -> ProjectSync:
        """Send the project's shared files; refused if the remote moved since our last sync."""
        mine = shared_files(root)
        if not mine:
            raise ConfigError(f"{root}: no shared files ({PINS_FILE}, topologies/*.yaml, "
                              "profiles/*.yaml) to push")
        state = _State(root, self.store.remote.url, name)
        current = self.remote_manifest(name)
        parent = _sha256(current[1]) if current else None
        if current is not None:
            theirs = current[0]["files"]
            if theirs == mine:
                state.save(parent)
                return ProjectSync(name, (), (), parent or "")
            if parent != state.last:
                differ = sorted(p for p in set(theirs) | set(mine) if theirs.get(p) !=
                                mine.get(p))
                raise SyncError(
                    f"project {name} on {self.store.remote.url} has changes this copy has not "
                    "pulled (" + ", ".join(f"{p}: remote {str(theirs.get(p, 'none'))[:12]}, "
                                           f"here {str(mine.get(p, 'none'))[:12]}"
                                           for p in differ)
                    + "); pull first (vboxlab sync project pull), then push")
        for rel, digest in mine.items():
            self.store.send_blob(root / rel, digest, f"project {name}: {rel}")
        manifest = {"name": name, "files": mine, "parent": parent}
        text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
        digest = _sha256(text)
        manifest_path, signature_path = self._paths(name)
        self.store.write_small(self.store.path("projects", name, "history", f"{digest}.json"),
                               text)
        if signer is not None:
            self.store.write_small(signature_path,
                                   json.dumps(signer.sign("project", text)).encode())
        elif self.store.fs.exists(signature_path):
            self.store.fs.rm(signature_path)
        self.store.write_small(manifest_path, text)
        self.store.log_event("push-project", name, contents_digest(mine), signer)
        state.save(digest)
        before = current[0]["files"] if current else {}
        return ProjectSync(name, tuple(p for p in mine if before.get(p) != mine[p]),
                           tuple(p for p in before if p not in mine), digest)

    # -- pull -----------------------------------------------------------
    def pull(self, root: Path, name: str, trust: TrustStore | None) -> ProjectSync:
        """Take the remote's files; refused (nothing written) where local edits would be lost."""
        current = self.remote_manifest(name)
        if current is None:
            raise ConfigError(f"{self.store.remote.url} has no project {name}")
        manifest, raw = current
        digest = _sha256(raw)
        if trust is not None:
            _, signature_path = self._paths(name)
            self.store.check_signature(raw, signature_path, "project", trust,
                                       f"project {name} on {self.store.remote.url}")
        state = _State(root, self.store.remote.url, name)
        base = (self._history(name, state.last) or {}).get("files", {}) if state.last else {}
        mine = shared_files(root)
        theirs: dict[str, str] = manifest["files"]
        conflicts = []
        for rel in sorted(set(theirs) | set(base)):
            want, have = theirs.get(rel), mine.get(rel)
            if have == want or have == base.get(rel):
                continue
            conflicts.append(f"{rel}: here {str(have or 'removed')[:12]}, remote "
                             f"{str(want or 'removed')[:12]}")
        if conflicts:
            raise SyncError(f"project {name}: files changed here since the last sync differ "
                            f"from the remote's ({'; '.join(conflicts)}); nothing was written. "
                            "Keep yours: push them after pulling into a clean copy; take "
                            "theirs: remove or restore yours first")
        blobs = {}
        for rel, want in theirs.items():
            if mine.get(rel) == want:
                continue
            data = self.store.read_small(self.store.path("blobs", want))
            if data is None or _sha256(data) != want:
                raise SyncError(f"{self.store.remote.url}: the blob of {rel} is missing or "
                                "damaged; nothing was written")
            blobs[rel] = data
        for rel, data in blobs.items():
            _write_inside(root, rel, data)
        removed = tuple(rel for rel in base if rel not in theirs and rel in mine)
        for rel in removed:
            (root / rel).unlink()
        state.save(digest)
        return ProjectSync(name, tuple(blobs), removed, digest)


def _write_inside(root: Path, rel: str, data: bytes) -> None:
    """Write ``root/rel`` whole, refusing any link on the way out of ``root``."""
    target = root / rel
    folder = root
    for part in PurePosixPath(rel).parts[:-1]:
        folder = folder / part
        if folder.is_symlink():
            raise SyncError(f"{folder} is a symbolic link; refusing to write through it")
        folder.mkdir(exist_ok=True)
    if target.is_symlink():
        raise SyncError(f"{target} is a symbolic link; refusing to write through it")
    tmp = target.with_name(f".{target.name}.sync-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)


class _State:
    """The manifest digest this copy last synced with each (remote, project)."""

    def __init__(self, root: Path, url: str, name: str) -> None:
        self.path = root / STATE
        self.key = f"{url}#{name}"
        try:
            self.data: dict[str, str] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.data = {}
        self.last = self.data.get(self.key)

    def save(self, digest: str | None) -> None:
        if digest is None:
            return
        self.data[self.key] = digest
        self.path.parent.mkdir(exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)
