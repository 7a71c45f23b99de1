"""A fabric on another host, driven over its SSH connection (labs across hosts).

The same C program runs on the host (sent once as a content-addressed blob; the
host must be the same architecture), started through an SSH exec channel with
``--stdio``: commands go to its stdin and replies come from its stdout, so no
socket of it is reachable from outside the host, and when the run dies its SSH
session closes, stdin ends, and the fabric exits. Its ports are UDP sockets it
makes itself (``uport``) on the host's loopback for the host's NICs and on the
host's address for tunnels to other fabrics.
"""

from __future__ import annotations

import contextlib
import platform
import threading
from typing import Any

import paramiko

from vboxlab.errors import HostError
from vboxlab.ledger import Ledger
from vboxlab.net.fabric.control import FabricCommands, FabricError, build_binary
from vboxlab.providers.remote_host import RemoteHost, file_digest

FOLDER = "vboxlab-fabric"


class RemoteFabric(FabricCommands):
    """One fabric process on ``remote`` for the lab ``lab_id``."""

    def __init__(self, remote: RemoteHost, lab_id: str, *, ledger: Ledger | None = None,
                 timeout: float = 10) -> None:
        self.remote = remote
        self.lab_id = lab_id
        self.folder = ""
        self._ledger = ledger
        self._rid: int | None = None
        self._timeout = timeout
        self._channel: paramiko.Channel | None = None
        self._stdin: Any = None
        self._stdout: Any = None
        self._lock = threading.Lock()
        self.pid: int | None = None

    def __repr__(self) -> str:
        state = "running" if self._channel is not None and \
            not self._channel.exit_status_ready() else "stopped"
        return f"<RemoteFabric {state} on {self.remote.target.label}>"

    def start(self) -> None:
        """Send the program (once per host), start it in the lab's folder there."""
        arch = self.remote.run(["uname", "-m"], what="reading the host's architecture").strip()
        if arch != platform.machine():
            raise HostError(f"{self.remote.target.label} is {arch}, this machine "
                            f"{platform.machine()}: the fabric built here cannot run there")
        binary = build_binary()
        program = self.remote.upload_blob(binary, file_digest(binary), label="the fabric")
        self.remote.run(["chmod", "700", program], what="making the fabric executable")
        self.folder = self.remote.machine_dir(self.lab_id, FOLDER)
        if self._ledger is not None:
            self._rid = self._ledger.add("remote-dir", f"fabric on {self.remote.target.label}",
                                         uri=self.remote.target.uri, path=self.folder)
        # in its folder, its pid said first; no control socket ("-"): the SSH channel is the
        # only way in
        self._channel = self.remote.exec_channel(
            ["sh", "-c", 'cd "$1" && echo "$$" && exec "$2" - --stdio', "sh", self.folder,
             program])
        self._channel.settimeout(self._timeout)
        self._stdin = self._channel.makefile_stdin("wb")
        self._stdout = self._channel.makefile("rb")
        first = self._stdout.readline().decode(errors="replace").strip()
        if not first.isdigit():
            self.check_alive()
            raise FabricError(f"the fabric on {self.remote.target.label} did not start: "
                              f"{first!r}")
        #: its process id on the host
        self.pid = int(first)
        self.stats()  # answers: it runs

    def check_alive(self) -> None:
        channel = self._channel
        if channel is None or channel.exit_status_ready() or channel.closed:
            said = ""
            if channel is not None:
                with contextlib.suppress(Exception):
                    said = channel.makefile_stderr("rb").read(800).decode(errors="replace")
            raise FabricError(f"the fabric on {self.remote.target.label} is not running; the "
                              f"links through it carry no traffic. It said: {said.strip()}")

    def command(self, line: str, fd: int | None = None) -> str:
        """One command over the SSH channel; the text after ``ok``, or FabricError."""
        if fd is not None:
            raise FabricError("a remote fabric takes no descriptors; use uport")
        if "\n" in line:
            raise FabricError(f"fabric commands are one line: {line!r}")
        with self._lock:
            self.check_alive()
            try:
                self._stdin.write(line.encode() + b"\n")
                self._stdin.flush()
                reply = self._stdout.readline().decode(errors="replace")
            except (OSError, paramiko.SSHException) as exc:
                raise FabricError(f"fabric command {line!r} on {self.remote.target.label} "
                                  f"failed: {exc}") from None
        if not reply:
            self.check_alive()
            raise FabricError(f"the fabric on {self.remote.target.label} closed during {line!r}")
        reply = reply.rstrip("\n")
        if reply.startswith("error"):
            raise FabricError(f"the fabric on {self.remote.target.label} refused {line!r}: "
                              f"{reply[6:]}")
        return str(reply[3:])

    def close(self) -> None:
        """Stop the process (quit, then the channel's end) and remove its folder."""
        if self._channel is not None:
            with contextlib.suppress(FabricError, OSError, paramiko.SSHException):
                self.command("quit")
            with contextlib.suppress(OSError, paramiko.SSHException):
                self._channel.close()
            self._channel = None
        if self.folder:
            self.remote.remove_machine_dir(self.folder)
            if self._ledger is not None and self._rid is not None:
                self._ledger.done(self._rid)
            self.folder = ""
