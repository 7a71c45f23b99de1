"""Building, starting and steering the fabric process (``fabric.c``).

The data path is C because Python cannot keep up: a minimal asyncio forwarder
here moved frames at a third of a direct QEMU-to-QEMU link. The binary is
compiled on first use with the host's C compiler into the user cache, keyed by
the source's hash, so a wheel needs no build step. Ports: each NIC's fabric-side
descriptor (one end of a pair of UDP sockets whose other end is QEMU's
``-netdev dgram``, or a namespace host's tap) is sent to the running fabric with
its ``port`` command (SCM_RIGHTS), so ports can be added at any time; a vhost-user
port (``vport``) is a socket the fabric listens on for the NIC's QEMU instead.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vboxlab import procs
from vboxlab.errors import ConfigError, VboxlabError
from vboxlab.hosttools import compile_c
from vboxlab.ledger import Ledger
from vboxlab.waiting import wait_until

SOURCE = Path(__file__).with_name("fabric.c")
#: the vhost-user back end fabric.c links in (a NIC whose rings the fabric reads directly)
VHOST_SOURCES = (Path(__file__).with_name("vhost_user.c"), Path(__file__).with_name("vhost_user.h"))


class FabricError(VboxlabError):
    """The fabric refused a command or is gone."""


#: the smallest ring the fabric accepts: two largest frames with their headers
MIN_RING_BYTES = 2 * (65536 + 40)


@dataclass(frozen=True)
class CaptureRing:
    """Limits of one capture: the newest ``max_bytes`` and/or ``max_seconds`` are kept.

    The fabric keeps the capture in two files, ``NAME`` and ``NAME.old``; when
    ``NAME`` reaches half a limit it becomes ``NAME.old`` and the previous
    ``.old`` (the oldest frames) is dropped and counted in the link's
    ``ring_dropped_packets``/``ring_dropped_bytes``. So between half and all of
    each limit is kept.
    """

    max_bytes: int | None = None
    max_seconds: float | None = None

    def __post_init__(self) -> None:
        if self.max_bytes is not None and self.max_bytes < MIN_RING_BYTES:
            raise ConfigError(f"capture ring of {self.max_bytes} bytes: it must hold at least "
                              f"{MIN_RING_BYTES} bytes (two of the largest frames); give a "
                              f"larger size such as 16MB")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"capture ring of {self.max_seconds} seconds: give a positive "
                              f"time, or none for no time limit")

    @property
    def limited(self) -> bool:
        return bool(self.max_bytes or self.max_seconds)


def build_binary() -> Path:
    """The compiled fabric, built once per source version."""
    return compile_c(SOURCE, "vboxlab-fabric", "the network fabric", others=VHOST_SOURCES)


class FabricCommands:
    """The fabric's commands, over whatever carries them (:meth:`command`)."""

    def command(self, line: str, fd: int | None = None) -> str:
        raise NotImplementedError

    def add_uport(self, port: int, segment: int, address: str, peer_address: str,
                  peer_port: int = 0) -> int:
        """A port whose UDP socket the fabric makes itself, bound to ``address`` and
        connected to the peer unless ``peer_port`` is 0; returns the socket's port."""
        return int(self.command(f"uport {port} {segment} {address} {peer_address} "
                                f"{peer_port}"))

    def add_vport(self, port: int, segment: int, path: Path) -> None:
        """A vhost-user port: the fabric listens at ``path`` for the NIC's QEMU (``-netdev
        vhost-user``) and moves frames in and out of the guest's rings in its memory."""
        self.command(f"vport {port} {segment} {path}")

    def connect_port(self, port: int, peer_address: str, peer_port: int) -> None:
        """Connect a port made by :meth:`add_uport` to its peer."""
        self.command(f"connect {port} {peer_address} {peer_port}")

    def add_trunk(self, trunk: int, segment_a: int, segment_b: int) -> None:
        self.command(f"trunk {trunk} {segment_a} {segment_b}")

    def set(self, direction: str, **settings: float | int | str) -> None:
        """Change one direction's impairments (fabric units: ns, fractions, bit/s, bytes)."""
        pairs = " ".join(f"{key}={value}" for key, value in settings.items())
        self.command(f"set {direction} {pairs}")

    def capture(self, direction: str, path: Path | None, *,
                ring: CaptureRing | None = None) -> None:
        """Capture ``direction`` to ``path`` (None: stop), within ``ring``'s limits if given."""
        if path is None:
            self.command(f"capture {direction} off")
        elif ring is None or not ring.limited:
            self.command(f"capture {direction} {path}")
        else:
            self.command(f"capture {direction} {path} {ring.max_bytes or 0} "
                         f"{int((ring.max_seconds or 0) * 1e9)}")

    def tee(self, name: str, path: Path, directions: list[str]) -> None:
        """Copy ``directions``' frames, merged in time order, as one live pcap stream to
        ``path`` (a FIFO a reader already holds open). Never blocks the data path: frames
        the reader is too slow for are dropped and counted."""
        self.command(f"tee {name} {path} {','.join(directions)}")

    def untee(self, name: str) -> dict[str, int]:
        """Hand the reader what is pending (5 s at most), close the stream: its counters."""
        result: dict[str, int] = json.loads(self.command(f"untee {name}"))
        return result

    def flush(self) -> None:
        self.command("flush")

    def seed(self, value: int) -> None:
        self.command(f"seed {value}")

    def stats(self) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = json.loads(self.command("stats"))
        return result


class Fabric(FabricCommands):
    """One fabric process: ports (NICs), trunks, and link directions to steer."""

    def __init__(self, workdir: Path, *, tied: bool = True, ledger: Ledger | None = None) -> None:
        self.workdir = workdir
        self.control_path = workdir / "fabric.sock"
        self.tied = tied
        self._ledger = ledger
        self._rid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._reader: Any = None
        self._command_lock = threading.Lock()  # one command and its reply at a time
        self._log: Any = None

    def __repr__(self) -> str:
        state = "running" if self._proc is not None and self._proc.poll() is None else "stopped"
        return f"<Fabric {state} pid={self.pid} control={self.control_path}>"

    def start(self) -> None:
        """Start the process and connect to its control socket."""
        binary = build_binary()
        self._log = (self.workdir / "fabric.log").open("ab")
        if self._ledger is not None:
            self._rid = self._ledger.add("process", "fabric")
            self._ledger.add("socket", "fabric control", path=str(self.control_path))
        self._proc = procs.spawn([str(binary), str(self.control_path)], tied=self.tied,
                                 stderr=self._log, cwd=self.workdir)
        if self._ledger is not None and self._rid is not None:
            self._ledger.set(self._rid, pid=self._proc.pid,
                             start=procs.start_time(self._proc.pid))

        def connected() -> socket.socket | None:
            self.check_alive()
            if not self.control_path.exists():
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.control_path))
            except OSError:
                sock.close()
                return None
            return sock

        self._control = wait_until(connected, timeout=10, what="the fabric's control socket",
                                   interval=0.01)
        self._control.settimeout(10)
        self._reader = self._control.makefile("r")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            code = self._proc.returncode if self._proc is not None else None
            log = (self.workdir / "fabric.log")
            said = log.read_text(errors="replace")[-800:] if log.is_file() else ""
            raise FabricError(f"the network fabric is not running (exit status {code}); the "
                              f"links of this lab carry no traffic. It said: {said.strip()}")

    def command(self, line: str, fd: int | None = None) -> str:
        """Send one command (with ``fd`` attached); return the text after ``ok``, or raise."""
        self.check_alive()
        assert self._control is not None
        if "\n" in line:
            raise FabricError(f"fabric commands are one line: {line!r}")
        try:
            with self._command_lock:  # machines brought up side by side add ports at once
                if fd is None:
                    self._control.sendall(line.encode() + b"\n")
                else:
                    socket.send_fds(self._control, [line.encode() + b"\n"], [fd])
                reply = self._reader.readline()
        except OSError as exc:
            self.check_alive()
            raise FabricError(f"fabric command {line!r} failed: {exc}") from exc
        if not reply:
            self.check_alive()
            raise FabricError(f"the fabric closed its control socket during {line!r}")
        reply = reply.rstrip("\n")
        if reply.startswith("error"):
            raise FabricError(f"the fabric refused {line!r}: {reply[6:]}")
        return str(reply[3:])

    def add_port(self, port: int, fd: int, segment: int) -> None:
        """Add a port on ``segment`` whose frames come and go through ``fd`` (sent along)."""
        self.command(f"port {port} {segment}", fd=fd)

    def detach(self) -> None:
        """Close this process's handles to the fabric and leave it running (a kept lab)."""
        for handle in (self._reader, self._control, self._log):
            if handle is not None:
                handle.close()
        self._control = self._reader = self._log = None

    def close(self) -> None:
        """Stop the process and release everything it held."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(FabricError, OSError):
                self.command("quit")
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        elif self._proc is not None:
            self._proc.wait()
        if self._reader is not None:
            self._reader.close()
        if self._control is not None:
            self._control.close()
        if self._log is not None:
            self._log.close()
        if self._proc is not None and self._ledger is not None and self._rid is not None:
            self._ledger.done(self._rid)
            self._rid = None
        self._proc = None
        self._control = self._reader = self._log = None
