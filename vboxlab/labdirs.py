"""Labs on disk, whoever made them: listing, cleaning, and taking over a kept lab's machines.

``vboxlab labs``, ``vboxlab clean`` and the start of every pytest session read
lab folders through this module; ``vboxlab snapshots`` attaches to a kept
machine through its provider (:func:`attach_machine`), so the CLI drives the
very code a live session uses. The state base is checked to be private first
(:func:`vboxlab.paths.check_private`): cleanup acts on what ledgers say, so it
reads ledgers only from a folder nobody else can write.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from vboxlab import procs
from vboxlab.errors import ConfigError, LabNotFound
from vboxlab.keys import load as load_key
from vboxlab.ledger import Ledger
from vboxlab.machine import Machine
from vboxlab.paths import check_private, state_base
from vboxlab.providers import load_provider

LEASE = "lease.json"
LEDGER = "ledger.jsonl"
#: the supervisor's control socket in a ``vboxlab up`` lab's folder
CONTROL_SOCKET = "control.sock"


@dataclass(frozen=True)
class LabRecord:
    """A lab folder found on disk."""

    id: str
    dir: Path
    owner_pid: int | None
    owner_alive: bool
    kept: bool
    machines: dict[str, dict[str, object]]
    #: "session" (a test run or script owns it) or "up" (a supervisor serves it)
    role: str = "session"
    created: float | None = None

    @property
    def status(self) -> str:
        """``up`` (a live supervisor), ``session`` (a live run: read-only), ``kept`` or ``dead``."""
        if self.owner_alive:
            return "up" if self.role == "up" else "session"
        return "kept" if self.kept else "dead"

    @property
    def control_socket(self) -> Path | None:
        """The supervisor's control socket, for a live ``vboxlab up`` lab."""
        return self.dir / CONTROL_SOCKET if self.status == "up" else None

    @property
    def stale(self) -> bool:
        """Owner dead and not kept: what ``vboxlab clean`` removes."""
        return not self.owner_alive and not self.kept


def _machine_running(info: dict[str, object]) -> bool:
    pid, start = info.get("pid"), info.get("start")
    return isinstance(pid, int) and isinstance(start, int) and procs.is_alive(pid, start)


def read_lab(folder: Path) -> LabRecord | None:
    """The lab in ``folder``, or None if it is not one."""
    if folder.is_symlink() or not folder.is_dir():
        return None
    lease_path = folder / LEASE
    try:
        lease = json.loads(lease_path.read_text())
        if not isinstance(lease, dict):
            raise ValueError("not an object")
    except (FileNotFoundError, NotADirectoryError, ValueError):
        if (folder / LEDGER).exists():
            return LabRecord(folder.name, folder, None, False, False, {})
        return None
    pid, start = lease.get("pid"), lease.get("start")
    alive = isinstance(pid, int) and isinstance(start, int) and procs.is_alive(pid, start)
    machines: dict[str, dict[str, object]] = {}
    for info_path in sorted(folder.glob("*/machine.json")):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(info, dict):
            info["running"] = _machine_running(info)
            machines[info_path.parent.name] = info
    role = lease.get("role")
    created = lease.get("created")
    return LabRecord(folder.name, folder, pid if isinstance(pid, int) else None, alive,
                     bool(lease.get("kept")), machines,
                     role if role in ("session", "up") else "session",
                     float(created) if isinstance(created, int | float) else None)


def list_labs(base: Path | None = None) -> list[LabRecord]:
    """Every lab under the state base (which must be private to this user)."""
    base = base or state_base()
    if not os.path.lexists(base):
        return []
    check_private(base)
    records = [read_lab(p) for p in sorted(base.iterdir())]
    return [r for r in records if r is not None]


def remove_lab(record: LabRecord) -> list[str]:
    """Release a lab's pending resources and delete its folder; returns errors."""
    errors = Ledger(record.dir / LEDGER).release_all()
    shutil.rmtree(record.dir, ignore_errors=True)
    return errors


def clean(base: Path | None = None, *, include_kept: bool = False,
          only: str | None = None) -> list[str]:
    """Remove labs whose owner is dead (and kept ones when asked); never a live run's lab."""
    removed = []
    for record in list_labs(base):
        if only is not None and record.id != only:
            continue
        if record.owner_alive:
            continue
        if record.kept and not (include_kept or only is not None):
            continue
        remove_lab(record)
        removed.append(record.id)
    if only is not None and not removed:
        known = [r.id for r in list_labs(base)]
        raise ConfigError(f"no removable lab {only!r} (owner alive, or no such lab); labs: "
                          f"{', '.join(known) or 'none'}")
    return removed


def find_lab(base: Path, lab_id: str) -> LabRecord:
    """The lab ``lab_id`` under ``base``; the error lists the labs there are."""
    record = read_lab(base / lab_id) if "/" not in lab_id and lab_id not in (".", "..") else None
    if record is None:
        known = ", ".join(r.id for r in list_labs(base)) or "none"
        raise LabNotFound(f"no lab {lab_id!r} in {base}; labs: {known}")
    return record


def kept_machine(base: Path, lab_id: str, name: str, *, unplug_nics: bool = False) -> Machine:
    """A kept lab's machine, attached (:func:`attach_machine`), its snapshot tree reconciled
    with what its disk holds: what the CLI's and the dashboard's snapshot actions act on."""
    machine = attach_machine(base, lab_id, name, unplug_nics=unplug_nics)
    machine.sync_snapshots()
    return machine


def release_machine(machine: Machine) -> None:
    """Let go of an attached machine: close its channel and QMP (QEMU keeps running)."""
    machine.channel.close()
    detach = getattr(machine.handle, "detach", None)
    if callable(detach):
        detach()


def attach_machine(base: Path, lab_id: str, name: str, *, unplug_nics: bool = False) -> Machine:
    """A machine of a kept lab, driven through its provider as a live session would.

    Refused while the lab's owner still runs (change its machines from its own
    tests). A stopped machine can be restored from a snapshot: its provider
    restarts it, detached, and records it in the lab's ledger.
    """
    check_private(base)
    record = find_lab(base, lab_id)
    if record.owner_alive:
        raise ConfigError(f"lab {lab_id} belongs to the live process {record.owner_pid}; change "
                          "its machines from its own tests")
    info = record.machines.get(name)
    if info is None:
        raise ConfigError(f"lab {lab_id} has no machine {name!r}; machines: "
                          f"{', '.join(record.machines) or 'none'}")
    log = logging.getLogger(f"vboxlab.kept.{lab_id}")
    if not log.handlers:
        handler = logging.FileHandler(record.dir / "lab.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [cli] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    provider = load_provider(str(info.get("provider", "qemu")))
    ledger = Ledger(record.dir / LEDGER)
    handle = provider.attach(record.dir / name, ledger, log, unplug_nics=unplug_nics)
    key = load_key(record.dir / "id_ed25519")
    return Machine(name, handle, handle.channel(key.paramiko_key()), log,
                   state_dir=record.dir / name)
