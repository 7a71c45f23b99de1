"""Machines of kept labs, driven from their files after the run that made them ended.

``vboxlab snapshots ...`` uses this: a running kept VM is reached through its
QMP socket; a stopped one is started again from the command line recorded in
its ``machine.json``, resuming from a snapshot (``-loadvm``), detached from the
CLI so it keeps running, and written into the lab's ledger so that
``vboxlab clean`` ends it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.errors import ConfigError, ProviderError
from vboxlab.ledger import Ledger
from vboxlab.providers.qemu import (
    DISK_NODE,
    block_snapshots,
    forwards_in,
    offline_delete,
    offline_snapshots,
)
from vboxlab.providers.qmp import QmpConnection, run_job, snapshot_args
from vboxlab.snapshots import TREE_FILE, SnapshotTree
from vboxlab.waiting import wait_until


class KeptMachine:
    """One VM of a lab on disk."""

    def __init__(self, lab_dir: Path, name: str) -> None:
        self.lab_dir = lab_dir
        self.name = name
        self.dir = lab_dir / name
        info_path = self.dir / "machine.json"
        if not info_path.is_file():
            known = sorted(p.parent.name for p in lab_dir.glob("*/machine.json"))
            raise ConfigError(f"lab {lab_dir.name} has no VM {name!r}; VMs: "
                              f"{', '.join(known) or 'none'}")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        self.tree = SnapshotTree(self.dir / TREE_FILE)
        self.overlay = self.dir / "disk.qcow2"

    @property
    def running(self) -> bool:
        pid = self.info.get("pid")
        return isinstance(pid, int) and procs.is_alive(pid, None) and \
            any(f"{self.dir}/" in part for part in procs.cmdline(pid))

    def _connect(self) -> QmpConnection:
        qmp = QmpConnection(self.dir / "qmp.sock", f"vboxlab-cli-{self.name}")
        try:
            qmp.connect(timeout=5)
        except Exception as exc:
            qmp.close()
            raise ProviderError(f"cannot reach QMP of {self.name}: {exc}") from exc
        return qmp

    def disk_snapshots(self) -> dict[str, int]:
        """Snapshot name -> vm state size, as the disk holds them."""
        if self.running:
            qmp = self._connect()
            try:
                nodes = qmp.cmd("query-named-block-nodes", {"flat": True})
            finally:
                qmp.close()
            snaps = block_snapshots(nodes)
        else:
            snaps = offline_snapshots(self.overlay)
        return {s["name"]: int(s.get("vm-state-size", 0)) for s in snaps}

    def sync(self) -> SnapshotTree:
        """The tree, reconciled with the disk."""
        self.tree.reconcile(self.disk_snapshots())
        return self.tree

    def restore(self, snapshot: str) -> None:
        """Bring the VM back to ``snapshot``, starting it if it is stopped."""
        self.tree[snapshot]
        if self.running:
            qmp = self._connect()
            try:
                run_job(qmp, "snapshot-load", "cli-load", 120, **snapshot_args(snapshot, DISK_NODE))
                if qmp.cmd("query-status")["status"] != "running":
                    qmp.cmd("cont")
            except RuntimeError as exc:
                raise ProviderError(f"{self.name}: {exc}") from exc
            finally:
                qmp.close()
        else:
            self._start(snapshot)
        self.tree.restored(snapshot)

    def _start(self, snapshot: str) -> None:
        argv = [*self.info["argv"], "-loadvm", snapshot]
        ledger = Ledger(self.lab_dir / "ledger.jsonl")
        rid = ledger.add("process", f"qemu {self.name}", marker=f"{self.dir}/")
        (self.dir / "qmp.sock").unlink(missing_ok=True)
        pid = procs.spawn_detached(argv, self.dir / "qemu.log")
        started = procs.start_time(pid)
        ledger.set(rid, pid=pid, start=started)

        def ready() -> QmpConnection | None:
            if not procs.is_alive(pid, started):
                raise ProviderError(f"{self.name}: QEMU ended while starting: "
                                    f"{(self.dir / 'qemu.log').read_text()[-800:]}")
            if not (self.dir / "qmp.sock").exists():
                return None
            try:
                return self._connect()
            except ProviderError:
                return None

        qmp = wait_until(ready, timeout=60, what=f"QMP of {self.name}", interval=0.05)
        try:
            usernet = qmp.cmd("human-monitor-command", {"command-line": "info usernet"})
        finally:
            qmp.close()
        self.info["pid"] = pid
        guest_port = int(self.info["ssh"].get("guest_port", 22))
        ssh = [host for host, guest in forwards_in(str(usernet)) if guest == guest_port]
        if ssh:
            self.info["ssh"]["port"] = ssh[0]
        self.info["forwards"] = {}
        (self.dir / "machine.json").write_text(json.dumps(self.info, indent=2) + "\n")

    def delete(self, snapshot: str, *, subtree: bool = False) -> list[str]:
        """Delete a snapshot (with its descendants only when ``subtree``)."""
        kids = [c.name for c in self.tree.children(self.tree[snapshot].name)]
        if kids and not subtree:
            raise ConfigError(f"snapshot {snapshot!r} has children ({', '.join(kids)}); "
                              "delete them first or pass --subtree")
        order = self.tree.subtree(snapshot)
        for victim in order:
            if self.running:
                qmp = self._connect()
                try:
                    run_job(qmp, "snapshot-delete", f"cli-del-{victim}", 60,
                            **snapshot_args(victim, DISK_NODE, False))
                except RuntimeError as exc:
                    raise ProviderError(f"{self.name}: {exc}") from exc
                finally:
                    qmp.close()
            else:
                offline_delete(self.overlay, victim)
            self.tree.removed(victim)
        return order
