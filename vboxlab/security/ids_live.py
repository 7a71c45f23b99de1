"""Intrusion detection while the test runs: Suricata reading each link's traffic live.

For every link a FIFO in the lab folder; a Suricata (``-r FIFO``, the same
configuration and rules as offline) reads it, and the fabric tees both
directions of the link into it as one pcap stream. The fabric never waits for
Suricata: what it is too slow for is dropped and counted (the report says so).
:meth:`LiveIds.alerts` reads what Suricata has raised so far, :meth:`LiveIds.wait_for`
waits for a rule to fire, :meth:`LiveIds.stop` ends the streams and waits for
Suricata to finish, which gives the complete answer. The processes are tied
to the test run and recorded in the lab's ledger, so nothing outlives a kill.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from vboxlab import procs
from vboxlab.errors import HostError, ScanFailed, WaitTimeout
from vboxlab.net.fabric.control import FabricError
from vboxlab.security.ids import Alert, IdsReport, Suricata, merge_links, parse_sid, read_eve
from vboxlab.waiting import wait_until

if TYPE_CHECKING:
    from vboxlab.ledger import Ledger
    from vboxlab.net.network import Network


class _Reader:
    """One link's Suricata and its stream."""

    def __init__(self, link: str, tee: str, folder: Path, proc: subprocess.Popen[bytes],
                 rid: int | None) -> None:
        self.link, self.tee, self.folder, self.proc, self.rid = link, tee, folder, proc, rid
        self.dropped = 0


class LiveIds:
    """Suricata on every link of a running network, fed live by the fabric."""

    def __init__(self, network: Network, engine: Suricata, workdir: Path,
                 ledger: Ledger | None = None) -> None:
        self.network = network
        self.engine = engine
        self.workdir = workdir
        self.ledger = ledger
        self.readers: list[_Reader] = []
        self.stopped: IdsReport | None = None
        self.started = 0.0

    def __repr__(self) -> str:
        state = "stopped" if self.stopped is not None else f"{len(self.readers)} links"
        return f"<LiveIds {self.network.topology.name}: {state}>"

    def start(self) -> LiveIds:
        """A Suricata per link, then the fabric's tee into each; fails clearly, leaves none."""
        self.started = time.monotonic()
        home_net = sorted({str(i.network) for i in self.network.topology.interfaces})
        try:
            for index, link in enumerate(self.network.links):
                name = f"{link.a}<->{link.b}"
                folder = self.workdir / name.replace("<->", "--")
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
                fifo = folder / "stream.pcap"
                fifo.unlink(missing_ok=True)
                os.mkfifo(fifo, 0o600)
                argv = [*self.engine.argv(folder, home_net), "-r", str(fifo)]
                rid = self.ledger.add("process", f"suricata {name}") if self.ledger else None
                with (folder / "suricata.log").open("ab") as log:
                    proc = procs.spawn(argv, tied=True, stderr=log, cwd=folder)
                if self.ledger is not None and rid is not None:
                    self.ledger.set(rid, pid=proc.pid, start=procs.start_time(proc.pid))
                reader = _Reader(name, f"ids{index}", folder, proc, rid)
                self.readers.append(reader)
                self._connect(reader, fifo, [link.a_to_b_dir, link.b_to_a_dir])
        except BaseException:
            self._end(wait=False)
            raise
        return self

    def _connect(self, reader: _Reader, fifo: Path, directions: list[str]) -> None:
        """Tee the link once Suricata holds the FIFO open for reading (it loads rules first)."""
        def opened() -> bool:
            if reader.proc.poll() is not None:
                said = (reader.folder / "suricata.log").read_text(errors="replace")[-1500:]
                raise HostError(f"Suricata for {reader.link} exited ({reader.proc.returncode})"
                                f" before reading the stream:\n{said}")
            try:
                self.network.fabric.tee(reader.tee, fifo, directions)
            except FabricError as exc:
                if "No such device or address" in str(exc):  # no reader on the FIFO yet
                    return False
                raise
            return True

        wait_until(opened, timeout=60, what=f"Suricata to open the stream of {reader.link}",
                   interval=0.05)

    def alerts(self) -> IdsReport:
        """What Suricata has raised so far (live: a packet may take a moment to be seen)."""
        if self.stopped is not None:
            return self.stopped
        report = self._report(growing=True)
        return report

    def wait_for(self, sid: int | str, timeout: float = 10.0) -> Alert:
        """Wait until rule ``sid`` fires on any link; its first alert."""
        number = parse_sid(sid)

        def fired() -> Alert | None:
            found = self.alerts().by_sid(number)
            return found[0] if found else None

        try:
            return wait_until(fired, timeout=timeout, what=f"IDS alert sid:{number}",
                              interval=0.1)
        except WaitTimeout:
            raise ScanFailed(f"no IDS alert sid:{number} within {timeout:g} s on "
                             f"{', '.join(r.link for r in self.readers)}") from None

    def _report(self, *, growing: bool) -> IdsReport:
        report = IdsReport(f"network {self.network.topology.name} (live)",
                           links=[r.link for r in self.readers],
                           rules=[str(p) for p in self.engine.rules])
        found = [a for r in self.readers
                 for a in read_eve(r.folder / "eve.json", r.link, growing=growing)]
        report.alerts = merge_links(found)
        report.seconds = time.monotonic() - self.started
        report.dropped = sum(r.dropped for r in self.readers)
        return report

    def stop(self) -> IdsReport:
        """End every stream, let Suricata finish reading: the complete alerts."""
        if self.stopped is None:
            self._end(wait=True)
            self.stopped = self._report(growing=False)
        return self.stopped

    def _end(self, *, wait: bool) -> None:
        for reader in self.readers:
            # never teed, or the fabric is gone: Suricata sees EOF either way
            with contextlib.suppress(FabricError):
                reader.dropped = self.network.fabric.untee(reader.tee)["dropped_packets"]
        for reader in self.readers:
            if wait:
                try:
                    reader.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    reader.proc.kill()
                    reader.proc.wait()
                if reader.proc.returncode not in (0, -9):
                    said = (reader.folder / "suricata.log").read_text(errors="replace")[-1500:]
                    raise HostError(f"Suricata for {reader.link} failed ({reader.proc.returncode})"
                                    f":\n{said}")
            elif reader.proc.poll() is None:
                reader.proc.kill()
                reader.proc.wait()
            if self.ledger is not None and reader.rid is not None:
                self.ledger.done(reader.rid)
                reader.rid = None

    def close(self) -> None:
        """Stop without waiting (teardown after a failure): no Suricata is left running."""
        if self.stopped is None:
            self._end(wait=False)
