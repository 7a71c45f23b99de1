"""What a lab on disk holds, as plain data: its status, machines, snapshots and topology.

``vboxlab status``, the supervisor's ``status`` action and the dashboard all
describe labs through :func:`describe_lab`, so they always agree. It reads only
the lab's folder (lease, each machine's ``machine.json`` and snapshot tree, the
topology copy a ``vboxlab up`` lab keeps) and never talks to a machine; live
facts (link settings and counters) are added by the supervisor that owns them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.labdirs import LabRecord
from vboxlab.snapshots import TREE_FILE, SnapshotTree

#: the copy of its topology a ``vboxlab up`` lab keeps in its folder
TOPOLOGY_COPY = "topology.yaml"
#: facts about a ``vboxlab up`` lab written by its supervisor (topology name, seed, source)
UP_FACTS = "up.json"


def _number(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def describe_machine(folder: Path, info: dict[str, object]) -> dict[str, Any]:
    """One machine from its ``machine.json`` (already read, with ``running``) and its folder."""
    launch = info.get("launch") if isinstance(info.get("launch"), dict) else {}
    assert isinstance(launch, dict)
    ssh = info.get("ssh")
    pid = _number(info.get("pid"))
    running = bool(info.get("running"))
    uptime = None
    if running and pid is not None:
        started = procs.started_at(pid)
        uptime = round(time.time() - started, 1) if started is not None else None
    snapshots: list[dict[str, Any]] = []
    current = None
    if (folder / TREE_FILE).is_file():
        tree = SnapshotTree(folder / TREE_FILE)
        current = tree.current
        snapshots = [{"name": n.name, "parent": n.parent, "created": n.created, "size": n.size,
                      "kind": n.kind, "test": n.test, "outcome": n.outcome} for n in tree]
    forwards = info.get("forwards") if isinstance(info.get("forwards"), dict) else {}
    assert isinstance(forwards, dict)
    described: dict[str, Any] = {
        "name": folder.name,
        "provider": str(info.get("provider", "qemu")),
        "state": "running" if running else "stopped",
        "template": info.get("template"), "version": info.get("version"),
        "cpus": _number(launch.get("cpus")), "memory": _number(launch.get("memory")),
        "accel": launch.get("accel"),
        "pid": pid if running else None, "uptime": uptime,
        "ssh": None, "forwards": {str(k): v for k, v in forwards.items()},
        "interfaces": [str(n.get("name")) for n in launch.get("nics", ())
                       if isinstance(n, dict)] or info.get("interfaces", []),
        "snapshots": snapshots, "current_snapshot": current,
    }
    if isinstance(ssh, dict) and ssh.get("port") and described["provider"] in ("qemu", "libvirt"):
        described["ssh"] = {"host": ssh.get("host"), "port": ssh.get("port"),
                            "user": ssh.get("user")}
    return described


def describe_lab(record: LabRecord) -> dict[str, Any]:
    """A lab as plain data (JSON-ready): status, owner, machines, and an up lab's topology."""
    facts: dict[str, Any] = {}
    if (record.dir / UP_FACTS).is_file():
        try:
            loaded = json.loads((record.dir / UP_FACTS).read_text())
            facts = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            facts = {}
    return {
        "id": record.id, "status": record.status, "role": record.role,
        "owner_pid": record.owner_pid, "created": record.created,
        "folder": str(record.dir),
        "topology": facts.get("topology"), "seed": facts.get("seed"),
        "source": facts.get("source"),
        "machines": [describe_machine(record.dir / name, info)
                     for name, info in sorted(record.machines.items())],
        "links": [],
    }
