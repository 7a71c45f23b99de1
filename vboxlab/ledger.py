"""The ledger: every resource a lab creates, written down before it is created.

One JSON object a line in ``<lab>/ledger.jsonl``. ``add`` comes before the
resource exists, ``set`` adds what is known only after (a pid), ``done`` says it
was released. Whoever finds the ledger (the lab itself, or ``vboxlab clean``
after the owner died) can release what is still pending, newest first.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vboxlab import procs

log = logging.getLogger(__name__)


@dataclass
class Resource:
    """One ledger entry: a process, a file, a socket or a folder."""

    id: int
    kind: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)


class Ledger:
    """Append-only record of a lab's resources."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next = 1 + max((r.id for r in self._read().values()), default=0)

    def _append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def add(self, kind: str, name: str, **data: Any) -> int:
        """Record a resource about to be created; returns its id."""
        rid = self._next
        self._next += 1
        self._append({"op": "add", "id": rid, "kind": kind, "name": name, **data})
        return rid

    def set(self, rid: int, **data: Any) -> None:
        """Add facts learned after creation (a process's pid and start time)."""
        self._append({"op": "set", "id": rid, **data})

    def done(self, rid: int) -> None:
        """Mark a resource released."""
        self._append({"op": "done", "id": rid})

    def _read(self) -> dict[int, Resource]:
        resources: dict[int, Resource] = {}
        if not self.path.is_file():
            return resources
        for line in self.path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: the rest still counts
            op, rid = entry.pop("op", None), entry.pop("id", None)
            if op == "add":
                resources[rid] = Resource(rid, entry.pop("kind"), entry.pop("name"), entry)
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
                release(resource)
                self.done(resource.id)
            except Exception as exc:
                log.warning("could not release %s %s: %s", resource.kind, resource.name, exc)
                errors.append(f"{resource.kind} {resource.name}: {exc}")
        return errors


def release(resource: Resource) -> None:
    """Release one resource, whether or not its creator is still alive."""
    data = resource.data
    if resource.kind == "process":
        marker = data.get("marker")
        if "pid" in data:
            procs.kill(int(data["pid"]), data.get("start"))
        if marker:  # also catches a process started before its pid was written
            for pid in procs.pids_mentioning(str(marker)):
                procs.kill(pid, None)
    elif resource.kind in ("file", "socket"):
        Path(data["path"]).unlink(missing_ok=True)
    elif resource.kind == "dir":
        shutil.rmtree(data["path"], ignore_errors=True)
    else:
        raise ValueError(f"unknown resource kind {resource.kind!r}")
