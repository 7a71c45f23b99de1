"""Snapshot trees: each VM's snapshots with their parents, kept in the lab's state folder.

Taking a snapshot makes it a child of the *current* state (the snapshot last
taken or restored). Restoring A, taking B, restoring A again and taking C
makes B and C siblings under A. The tree is saved atomically (write, then
rename) after every change, so a kill never leaves half a file, and it is
reconciled with what the disk really holds when read back.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from vboxlab.errors import ConfigError

TREE_FILE = "snapshots.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """Validate a snapshot name (letters, digits, '.', '_', '-'; at most 64)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"invalid snapshot name {name!r}: use up to 64 letters, digits, '.', "
                          "'_' and '-', starting with a letter or digit")
    return name


def safe_name(text: str, limit: int = 48) -> str:
    """A snapshot-name-safe version of free text such as a test id."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text)
    return re.sub(r"^[^A-Za-z0-9]+", "", cleaned[-limit:]).rstrip("-.") or "x"


@dataclass
class SnapshotNode:
    """One snapshot: where it came from, when, which test made it, how big it is."""

    name: str
    parent: str | None
    created: float
    test: str | None
    size: int
    kind: str = "manual"  # manual | clean | failure | every-n | interval
    outcome: str | None = None  # passed | failed | None (outcome of ``test``)


class SnapshotTree:
    """The snapshots of one VM, persisted in ``<vm folder>/snapshots.json``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.nodes: dict[str, SnapshotNode] = {}
        self.current: str | None = None
        if path.is_file():
            data = json.loads(path.read_text())
            self.current = data.get("current")
            for raw in data.get("nodes", []):
                node = SnapshotNode(**raw)
                self.nodes[node.name] = node

    def __repr__(self) -> str:
        if not self.nodes:
            return "<SnapshotTree (no snapshots)>"
        names = ", ".join(node.name for _, node in self.walk())
        return f"<SnapshotTree {names}; current {self.current or 'none'}>"

    def __str__(self) -> str:
        return self.render()

    # -- reading --------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __getitem__(self, name: str) -> SnapshotNode:
        if name not in self.nodes:
            known = ", ".join(self.nodes) or "none"
            raise ConfigError(f"no snapshot {name!r}; snapshots: {known}")
        return self.nodes[name]

    def __iter__(self) -> Iterator[SnapshotNode]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def children(self, name: str | None) -> list[SnapshotNode]:
        """The snapshots taken from ``name`` (None: the roots), oldest first."""
        return [n for n in self.nodes.values() if n.parent == name]

    def roots(self) -> list[SnapshotNode]:
        return self.children(None)

    def ancestors(self, name: str) -> list[SnapshotNode]:
        """From ``name``'s parent up to its root."""
        chain = []
        parent = self[name].parent
        while parent is not None and parent in self.nodes:
            chain.append(self.nodes[parent])
            parent = self.nodes[parent].parent
        return chain

    def walk(self) -> Iterator[tuple[int, SnapshotNode]]:
        """Depth-first (depth, node) pairs, children in the order they were taken."""
        def visit(node: SnapshotNode, depth: int) -> Iterator[tuple[int, SnapshotNode]]:
            yield depth, node
            for child in self.children(node.name):
                yield from visit(child, depth + 1)

        for root in self.roots():
            yield from visit(root, 0)

    def subtree(self, name: str) -> list[str]:
        """``name`` and all its descendants, deepest first (the order to delete them)."""
        order: list[str] = []

        def visit(current: str) -> None:
            for child in self.children(current):
                visit(child.name)
            order.append(current)

        visit(self[name].name)
        return order

    def render(self) -> str:
        """A text tree, like ``tree`` prints folders; ``*`` marks the current state."""
        lines: list[str] = []

        def label(node: SnapshotNode) -> str:
            parts = [node.name + (" *" if node.name == self.current else "")]
            parts.append(time.strftime("%H:%M:%S", time.localtime(node.created)))
            parts.append(_human(node.size))
            if node.kind != "manual":
                parts.append(node.kind)
            if node.test:
                parts.append(f"test {node.test}" + (f" ({node.outcome})" if node.outcome else ""))
            return "  ".join(parts)

        def visit(node: SnapshotNode, prefix: str, last: bool, top: bool) -> None:
            branch = "" if top else ("└── " if last else "├── ")
            lines.append(prefix + branch + label(node))
            kids = self.children(node.name)
            extension = "" if top else ("    " if last else "│   ")
            for index, child in enumerate(kids):
                visit(child, prefix + extension, index == len(kids) - 1, False)

        for root in self.roots():
            visit(root, "", True, True)
        return "\n".join(lines) if lines else "(no snapshots)"

    # -- changing -------------------------------------------------------
    def add(self, name: str, *, size: int, test: str | None, kind: str) -> SnapshotNode:
        """Record a snapshot just taken from the current state; it becomes current."""
        node = SnapshotNode(name, self.current, time.time(), test, size, kind)
        self.nodes[name] = node
        self.current = name
        self.save()
        return node

    def restored(self, name: str) -> None:
        """Record that the machine is back in snapshot ``name``'s state."""
        self.current = self[name].name
        self.save()

    def left(self) -> None:
        """The machine runs on from no recorded state (a fresh boot)."""
        self.current = None
        self.save()

    def removed(self, name: str) -> None:
        """Forget a deleted snapshot (its children must be gone already)."""
        if self.children(name):
            raise ConfigError(f"snapshot {name!r} still has children")
        node = self.nodes.pop(name)
        if self.current == name:
            self.current = node.parent
        self.save()

    def set_outcome(self, test: str, outcome: str) -> None:
        """Colour the snapshots a test made with its outcome."""
        changed = False
        for node in self.nodes.values():
            if node.test == test and node.outcome is None:
                node.outcome = outcome
                changed = True
        if changed:
            self.save()

    def reconcile(self, on_disk: dict[str, int]) -> None:
        """Match the tree to the snapshots the disk really has (name -> size).

        A snapshot the disk lost is dropped and its children move to its parent;
        one the tree never heard of is added as a root.
        """
        changed = False
        for name in [n for n in self.nodes if n not in on_disk]:
            parent = self.nodes[name].parent
            for child in self.children(name):
                child.parent = parent
            del self.nodes[name]
            if self.current == name:
                self.current = parent
            changed = True
        for name, size in on_disk.items():
            if name not in self.nodes:
                self.nodes[name] = SnapshotNode(name, None, time.time(), None, size, "unknown")
                changed = True
        if changed:
            self.save()

    def save(self) -> None:
        data = {"current": self.current, "nodes": [asdict(n) for n in self.nodes.values()]}
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(self.path)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
