"""``vboxlab backup`` / ``vboxlab restore-backup``: a kept lab to a remote and back elsewhere.

A backup holds every regular file of the lab's folder (overlays with their
snapshots, snapshot trees, machine records, console logs, the lab's SSH keys,
its log and ledger) as blobs, under a signed manifest::

    backups/LAB/STAMP/manifest.json  {"lab", "files": {path: sha256}, "machines": {...}}
    backups/LAB/STAMP/manifest.sig

Running machines first get a snapshot (``backup-STAMP``) so their current
state survives, and are paused while their disk is read. A restore checks
every blob's SHA-256, needs each machine's template with the very same files
(pulled from the same remote when it is there), rewrites what is machine-local
(paths, the QEMU binary, the template's disk and kernel, a lease with no
owner; the old ledger kept as ``ledger-origin.jsonl`` for the record), rebases
each overlay onto the local template, and renames the lab into place whole.
The restored machines are stopped: bring one back with ``vboxlab snapshots
restore LAB VM SNAPSHOT --unplugged``. A backup holds the lab's private keys:
keep the remote private.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vboxlab.errors import ConfigError
from vboxlab.hosttools import require, run
from vboxlab.labdirs import LEASE, LEDGER, attach_machine, find_lab, release_machine
from vboxlab.machine import Machine
from vboxlab.paths import check_private
from vboxlab.providers.base import MachineState
from vboxlab.providers.qemu import QemuMachine
from vboxlab.sync.signing import SigningKey, TrustStore
from vboxlab.sync.store import SyncError, TemplateStore, contents_digest
from vboxlab.templates.archive import copy_hashing
from vboxlab.templates.chain import disk_chain
from vboxlab.templates.repository import BuiltTemplate, TemplateRepository, file_sha256

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
_SKIP = re.compile(r"(\.sock|\.pid|\.partial)$")
_STAMP = re.compile(r"^\d{8}T\d{6}Z$")
_PATH = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]*(/[A-Za-z0-9_.][A-Za-z0-9_.-]*){0,3}$")


@dataclass(frozen=True)
class BackupResult:
    lab: str
    stamp: str
    files: int
    moved_bytes: int


def _quiet(_: str) -> None:
    pass


def _lab_files(folder: Path) -> dict[str, Path]:
    """Relative path -> file for every regular file worth keeping in a lab folder."""
    found = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        rel = path.relative_to(folder).as_posix()
        if stat.S_ISREG(mode) and not _SKIP.search(rel) and not rel.startswith("exports/"):
            found[rel] = path
    return found


def backup_lab(base: Path, lab_id: str, store: TemplateStore, signer: SigningKey | None, *,
               snapshot_running: bool = True, progress: Progress = _quiet) -> BackupResult:
    """Copy the kept lab ``lab_id`` (under ``base``) to ``store``'s remote."""
    check_private(base)
    record = find_lab(base, lab_id)
    if record.owner_alive:
        raise ConfigError(f"lab {lab_id} belongs to the live process {record.owner_pid}; back "
                          "up kept labs (its run must have ended)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    machines: dict[str, dict[str, Any]] = {}
    paused: list[QemuMachine] = []
    attached: list[Machine] = []
    try:
        for name, info in record.machines.items():
            launch = info.get("launch")
            if str(info.get("provider", "qemu")) not in ("qemu", "libvirt") or \
                    (isinstance(launch, dict) and launch.get("media")):
                raise ConfigError(f"lab {lab_id}: machine {name} (provider "
                                  f"{info.get('provider')}, boot media) cannot be backed up "
                                  "yet: only template-booted qemu and libvirt machines can")
            template = TemplateRepository().installed(str(info.get("template")))
            built = next((b for b in template if b.template.version == info.get("version")),
                         None)
            machines[name] = {"template": info.get("template"), "version": info.get("version"),
                              "contents": contents_digest(built.manifest.get("files", {}))
                              if built else None}
            if not info.get("running"):
                continue
            machine = attach_machine(base, lab_id, name)
            attached.append(machine)
            if snapshot_running:
                machine.sync_snapshots()
                machine.snapshot(f"backup-{stamp.lower()}")
                progress(f"{name}: took snapshot backup-{stamp.lower()}")
            if isinstance(machine.handle, QemuMachine) and \
                    machine.handle.state() is MachineState.RUNNING:
                machine.handle.qmp("stop")
                paused.append(machine.handle)
        files = _lab_files(record.dir)
        digests = {rel: file_sha256(path) for rel, path in files.items()}
        moved = 0
        for rel, path in files.items():
            moved += store.send_blob(path, digests[rel], f"{lab_id}: {rel}", progress)
    finally:
        for handle in paused:
            handle.qmp("cont")
        for machine in attached:
            release_machine(machine)
    manifest = {"lab": lab_id, "stamp": stamp, "files": digests, "machines": machines,
                "created": record.created}
    text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    if signer is not None:
        store.write_small(store.path("backups", lab_id, stamp, "manifest.sig"),
                          json.dumps(signer.sign("backup", text)).encode())
    store.write_small(store.path("backups", lab_id, stamp, "manifest.json"), text)
    store.log_event("backup", f"{lab_id}@{stamp}", contents_digest(digests), signer)
    return BackupResult(lab_id, stamp, len(files), moved)


def list_backups(store: TemplateStore) -> list[tuple[str, str]]:
    """(lab, stamp) of every complete backup on the remote, oldest first per lab."""
    found = []
    for path in store.fs.glob(store.path("backups", "*", "*", "manifest.json")):
        stamp_dir = PurePosixPath(str(path)).parent
        found.append((stamp_dir.parent.name, stamp_dir.name))
    return sorted(found)


def _manifest(store: TemplateStore, lab_id: str, stamp: str,
              trust: TrustStore | None) -> dict[str, Any]:
    where = f"backup {lab_id}@{stamp} on {store.remote.url}"
    raw = store.read_small(store.path("backups", lab_id, stamp, "manifest.json"))
    if raw is None:
        raise ConfigError(f"{store.remote.url} has no backup {lab_id}@{stamp}; backups: "
                          + (", ".join(f"{lab}@{s}" for lab, s in list_backups(store))
                             or "none"))
    if trust is not None:
        store.check_signature(raw, store.path("backups", lab_id, stamp, "manifest.sig"),
                              "backup", trust, where)
    try:
        manifest: dict[str, Any] = json.loads(raw)
        files, machines = manifest["files"], manifest["machines"]
        assert isinstance(files, dict) and isinstance(machines, dict)
    except (ValueError, KeyError, AssertionError):
        raise SyncError(f"{where}: not a backup manifest") from None
    for rel, digest in files.items():
        if not _PATH.match(rel) or ".." in rel.split("/") or \
                not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
            raise SyncError(f"{where}: entry {rel!r} is not a lab file with a SHA-256")
    for name in machines:
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,62}", name):
            raise SyncError(f"{where}: machine name {name!r} is not valid")
    return manifest


def restore_backup(base: Path, lab_id: str, store: TemplateStore,
                   repository: TemplateRepository, trust: TrustStore | None, *,
                   stamp: str | None = None, new_id: str | None = None,
                   progress: Progress = _quiet) -> Path:
    """Bring backup ``lab_id`` (the latest, or ``stamp``) back as a kept lab under ``base``."""
    stamps = [s for lab, s in list_backups(store) if lab == lab_id]
    if stamp is None:
        if not stamps:
            raise ConfigError(f"{store.remote.url} has no backup of lab {lab_id}")
        stamp = stamps[-1]
    if not _STAMP.match(stamp):
        raise ConfigError(f"backup stamp {stamp!r} is not like 20261128T174000Z")
    manifest = _manifest(store, lab_id, stamp, trust)
    target_id = new_id or lab_id
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", target_id):
        raise ConfigError(f"lab id {target_id!r}: letters, digits, '.', '_' and '-' only")
    check_private(base)
    target = base / target_id
    if target.exists():
        raise ConfigError(f"{target} exists; restore under another id (--as NEW_ID)")
    templates = {name: _template_for(name, info, store, repository, trust, progress)
                 for name, info in manifest["machines"].items()}
    scratch = base / f".restore-{target_id}-{time.monotonic_ns()}"
    scratch.mkdir(mode=0o700)
    try:
        for rel, digest in sorted(manifest["files"].items()):
            path = scratch / rel
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            progress(f"{target_id}: fetching {rel}")
            with store.fs.open(store.path("blobs", digest), "rb") as stream:
                got = copy_hashing(stream, path)
            if got != digest:
                raise SyncError(f"{store.remote.url}: {rel} of backup {lab_id}@{stamp} has "
                                f"SHA-256 {got}, not {digest}; nothing restored")
            path.chmod(0o600)
        old_dir = _old_lab_dir(scratch, manifest)
        for name, built in templates.items():
            _localise_machine(scratch / name, name, old_dir, target, built)
        if (scratch / LEDGER).exists():
            (scratch / LEDGER).rename(scratch / "ledger-origin.jsonl")
        (scratch / LEASE).write_text(json.dumps({
            "id": target_id, "pid": None, "start": None, "kept": True,
            "created": manifest.get("created") or time.time(), "role": "session",
            "restored_from": f"{store.remote.url} {lab_id}@{stamp}"}, indent=2) + "\n")
        scratch.rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _old_lab_dir(scratch: Path, manifest: dict[str, Any]) -> str | None:
    for name in manifest["machines"]:
        try:
            overlay = json.loads((scratch / name / "machine.json").read_text())["launch"][
                "overlay"]
            return str(PurePosixPath(overlay).parent.parent)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _template_for(name: str, info: dict[str, Any], store: TemplateStore,
                  repository: TemplateRepository, trust: TrustStore | None,
                  progress: Progress) -> BuiltTemplate:
    """The local template with exactly the files the machine's disk was made over."""
    template, version, contents = info.get("template"), info.get("version"), info.get("contents")
    if not isinstance(template, str) or not isinstance(version, str):
        raise SyncError(f"machine {name}: the backup does not say its template")

    def matching() -> BuiltTemplate | None:
        for built in repository.installed(template):
            if built.template.version == version and \
                    contents_digest(built.manifest.get("files", {})) == contents:
                return built
        return None

    found = matching()
    if found is None and (template, version) in store.templates():
        progress(f"{name}: pulling template {template} {version}")
        store.pull(template, version, repository, trust, progress)
        found = matching()
    if found is None:
        raise ConfigError(f"machine {name} needs template {template} {version} with contents "
                          f"{str(contents)[:16]}..., which is neither installed here nor on "
                          f"{store.remote.url}; push it there from the machine that made the "
                          "lab (vboxlab sync push)")
    return found


def _localise_machine(folder: Path, name: str, old_dir: str | None, target: Path,
                      built: BuiltTemplate) -> None:
    """Point a restored machine's record at this host's paths and template."""
    from vboxlab.providers.direct_kernel import NoDirectBoot, direct_kernel
    from vboxlab.providers.vmfiles import shared_initrd

    info_path = folder / "machine.json"
    info = json.loads(info_path.read_text())
    launch = info["launch"]

    def moved(path: object) -> object:
        if isinstance(path, str) and old_dir and path.startswith(old_dir + "/"):
            return str(target) + path[len(old_dir):]
        return path

    # a VM whose own files come through fw_cfg boots the template's shared initrd, made here
    own = ("vm_files",) if launch.get("vm_files") is not None else ("initrd",)
    for key in ("overlay", "console", "qmp", "agent", "seed", *own):
        launch[key] = moved(launch.get(key))
    info["qmp"] = moved(info.get("qmp"))
    for key in ("overlay", "console", "qmp", "agent", "seed", *own):
        value = launch.get(key)
        if value is not None and not str(value).startswith(str(target) + "/"):
            raise SyncError(f"machine {name}: {key} {value!r} lies outside the lab folder; "
                            "refusing the backup")
    if launch.get("vm_files") is not None:
        launch["initrd"] = str(shared_initrd(built, agent=launch.get("agent") is not None))
    launch["base_disk"] = str(built.disk)
    launch["base_format"] = "qcow2"
    launch["base_chain"] = list(disk_chain(built))
    if launch.get("kernel") is not None:
        try:
            launch["kernel"] = str(direct_kernel(built.kernel))
        except NoDirectBoot:
            launch["kernel"] = str(built.kernel)
    info.pop("pid", None)
    info.pop("start", None)
    info["forwards"] = {}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    overlay = folder / "disk.qcow2"
    run([require("qemu-img", "to rebase restored overlays"), "rebase", "-u", "-f", "qcow2",
         "-F", "qcow2", "-b", str(built.disk), str(overlay)],
        what=f"pointing {name}'s disk at template {built.template.name}")
