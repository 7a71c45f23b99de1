"""The fabrics of a lab across hosts, steered as one.

A lab whose nodes run on several hosts has one fabric per host: this machine's
(:class:`~vboxlab.net.fabric.control.Fabric`) and one on each remote host
(:class:`~vboxlab.net.fabric.remote.RemoteFabric`). A segment with ports on
several hosts is joined by a tunnel port on each side (UDP between the hosts,
through this machine's fabric: a star). Every link direction lives on the fabric
that owns its port (``pN.in`` / ``pN.out``), which is the sending side for a
point-to-point link, so impairments apply once, where frames leave their node,
and counters stay per direction. Captures of a remote direction are written on
its host and copied here when they stop or are flushed.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from pathlib import Path

from vboxlab.errors import NotSupported
from vboxlab.net.fabric.control import CaptureRing, Fabric, FabricCommands
from vboxlab.net.fabric.remote import RemoteFabric

_PORT_DIR = re.compile(r"^p(\d+)\.(in|out)$")
#: the fabric's port numbers are 0 .. MAX_PORTS-1 (fabric.c)
MAX_PORTS = 256


class FabricSet(FabricCommands):
    """This machine's fabric plus remote ones; commands go where their direction lives."""

    def __init__(self, local: Fabric) -> None:
        self.local = local
        self.remotes: list[RemoteFabric] = []
        self._owner: dict[int, RemoteFabric] = {}
        #: remote captures: direction -> (its file on the host, the local path it goes to)
        self._captures: dict[str, tuple[str, Path]] = {}

    def __repr__(self) -> str:
        return f"<FabricSet {self.local!r} + {len(self.remotes)} remote>"

    def add_remote(self, fabric: RemoteFabric) -> None:
        self.remotes.append(fabric)

    def own(self, port: int, fabric: RemoteFabric) -> None:
        """Port ``port`` (its directions) lives on ``fabric``."""
        self._owner[port] = fabric

    def _for(self, direction: str) -> FabricCommands:
        found = _PORT_DIR.match(direction)
        if found and int(found.group(1)) in self._owner:
            return self._owner[int(found.group(1))]
        return self.local

    # -- what Network and the lab use -------------------------------------
    def command(self, line: str, fd: int | None = None) -> str:
        return self.local.command(line, fd)

    def add_port(self, port: int, fd: int, segment: int) -> None:
        self.local.add_port(port, fd, segment)

    def set(self, direction: str, **settings: float | int | str) -> None:
        self._for(direction).set(direction, **settings)

    def capture(self, direction: str, path: Path | None, *,
                ring: CaptureRing | None = None) -> None:
        owner = self._for(direction)
        if not isinstance(owner, RemoteFabric):
            self.local.capture(direction, path, ring=ring)
            return
        if path is None:
            owner.capture(direction, None)
            self._fetch(direction)
            self._captures.pop(direction, None)
            return
        on_host = posixpath.join(owner.folder, f"{direction}.pcap")
        owner.capture(direction, Path(on_host), ring=ring)
        self._captures[direction] = (on_host, path)

    def _fetch(self, direction: str) -> None:
        on_host, local = self._captures.get(direction, ("", Path()))
        owner = self._for(direction)
        if on_host and isinstance(owner, RemoteFabric):
            owner.remote.get(on_host, local)

    def tee(self, name: str, path: Path, directions: list[str]) -> None:
        remote = [d for d in directions if isinstance(self._for(d), RemoteFabric)]
        if remote:
            raise NotSupported(f"live traffic copies of directions on other hosts "
                               f"({', '.join(remote)}) are not supported yet; capture them "
                               "instead")
        self.local.tee(name, path, directions)

    def untee(self, name: str) -> dict[str, int]:
        return self.local.untee(name)

    def flush(self) -> None:
        self.local.flush()
        for fabric in self.remotes:
            fabric.flush()
        for direction in list(self._captures):
            self._fetch(direction)

    def seed(self, value: int) -> None:
        self.local.seed(value)
        for fabric in self.remotes:
            fabric.seed(value)

    def stats(self) -> dict[str, dict[str, int]]:
        merged = dict(self.local.stats())
        for fabric in self.remotes:  # its tunnel ports share numbers with ours: only its own
            merged.update({d: s for d, s in fabric.stats().items() if self._for(d) is fabric})
        return merged

    def check_alive(self) -> None:
        self.local.check_alive()
        for fabric in self.remotes:
            fabric.check_alive()

    def detach(self) -> None:
        if self.remotes:
            raise NotSupported("a lab across hosts cannot be kept: its remote fabrics end with "
                               "the run")
        self.local.detach()

    def close(self) -> None:
        for direction in list(self._captures):
            with contextlib.suppress(Exception):
                self.capture(direction, None)
        for fabric in self.remotes:
            with contextlib.suppress(Exception):
                fabric.close()
        self.local.close()
