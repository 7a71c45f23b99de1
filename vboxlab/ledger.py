"""The ledger: every resource a lab creates, written down before it is created.

One JSON object a line in ``<lab>/ledger.jsonl``. ``add`` comes before the
resource exists, ``set`` adds what is known only after (a pid and its start
time), ``done`` says it was released. Whoever finds the ledger (the lab itself,
or ``vboxlab clean`` after the owner died) can release what is still pending,
newest first.

A ledger is data that cleanup acts on, so releasing trusts it only so far: a
file, socket or folder is removed only if it lies inside the lab's own folder,
and a process is killed only if both its pid and its start time match what was
recorded (a process that was never fully recorded was tied to its owner by the
parent-death signal and is gone with it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.paths import is_inside

log = logging.getLogger(__name__)


@dataclass
class Resource:
    """One ledger entry: a process, a file, a socket or a folder."""

    id: int
    kind: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Append-only record of a lab's resources; safe to use from several threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._next = 1 + max((r.id for r in self._read().values()), default=0)

    @property
    def folder(self) -> Path:
        """The lab folder the ledger belongs to: the only place its paths may point."""
        return self.path.parent

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, kind: str, name: str, **data: Any) -> int:
        """Record a resource about to be created; returns its id."""
        with self._lock:
            rid = self._next
            self._next += 1
            self._append({"op": "add", "id": rid, "kind": kind, "name": name, **data})
        return rid

    def set(self, rid: int, **data: Any) -> None:
        """Add facts learned after creation (a process's pid and start time)."""
        with self._lock:
            self._append({"op": "set", "id": rid, **data})

    def done(self, rid: int) -> None:
        """Mark a resource released."""
        with self._lock:
            self._append({"op": "done", "id": rid})

    def _read(self) -> dict[int, Resource]:
        resources: dict[int, Resource] = {}
        if not self.path.is_file():
            return resources
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: the rest still counts
            if not isinstance(entry, dict):
                continue
            op, rid = entry.pop("op", None), entry.pop("id", None)
            if not isinstance(rid, int):
                continue
            if op == "add" and isinstance(entry.get("kind"), str):
                resources[rid] = Resource(rid, entry.pop("kind"), str(entry.pop("name", "")),
                                          entry)
            elif op == "set" and rid in resources:
                resources[rid].data.update(entry)
            elif op == "done":
                resources.pop(rid, None)
        return resources

    def pending(self) -> list[Resource]:
        """Resources not released yet, oldest first."""
        return sorted(self._read().values(), key=lambda r: r.id)

    def release_all(self) -> list[str]:
        """Release every pending resource, newest first; returns the errors seen."""
        errors = []
        for resource in reversed(self.pending()):
            try:
                release(resource, self.folder)
                self.done(resource.id)
            except Exception as exc:
                log.warning("could not release %s %s: %s", resource.kind, resource.name, exc)
                errors.append(f"{resource.kind} {resource.name}: {exc}")
        return errors


def release(resource: Resource, folder: Path) -> None:
    """Release one resource of the lab in ``folder``, whether or not its creator lives."""
    data = resource.data
    if resource.kind == "process":
        pid, start = data.get("pid"), data.get("start")
        if isinstance(pid, int) and isinstance(start, int):
            procs.kill(pid, start)
        elif pid is not None:
            log.info("not killing pid %s of %s: no start time recorded to prove it is the same "
                     "process", pid, resource.name)
    elif resource.kind in ("file", "socket", "dir"):
        path = Path(str(data.get("path", "")))
        if not path.is_absolute() or not is_inside(path, folder) or \
                os.path.realpath(path) == os.path.realpath(folder):
            raise ValueError(f"refusing to remove {path}: it is not inside the lab folder "
                             f"{folder}")
        if resource.kind == "dir":
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    elif resource.kind == "libvirt-domain":
        from vboxlab.providers.libvirt import release_domain

        release_domain(resource.name, data)
    elif resource.kind == "remote-dir":
        from vboxlab.providers.remote_host import release_machine_dir

        release_machine_dir(resource.name, data)
    else:
        raise ValueError(f"unknown resource kind {resource.kind!r}")
