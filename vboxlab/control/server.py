"""The supervisor's control socket: a UNIX socket (mode 0600) that runs the lab's actions.

A thread per connection, one request per connection (see
:mod:`vboxlab.control.protocol`). Only the user running the supervisor may
talk to it: the socket lives in the lab's 0700 folder, is created 0600, and
every peer's user id is checked with ``SO_PEERCRED``. Errors travel back as
vboxlab's own messages; anything unexpected is logged to the lab log and
answered with a short error naming it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any

from vboxlab.control.actions import LabControl
from vboxlab.control.protocol import MAX_REQUEST, ControlError, read_line
from vboxlab.errors import VboxlabError

#: how long a connection may take to send its request
REQUEST_TIMEOUT = 30.0


def peer_uid(sock: socket.socket) -> int:
    """The user id of the process on the other end of a UNIX socket."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class _Handler(socketserver.BaseRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        if peer_uid(sock) != os.getuid():
            self.server.log.warning("control: refused a connection from user %d",
                                    peer_uid(sock))
            return
        sock.settimeout(REQUEST_TIMEOUT)
        try:
            line = read_line(sock, MAX_REQUEST, "control request")
            request = json.loads(line)
        except (ControlError, ValueError, OSError) as exc:
            self._reply({"ok": False, "kind": "ConfigError",
                         "error": f"bad control request: {exc}"})
            return
        sock.settimeout(None)  # an action (a boot, a long command) takes what it takes
        self._reply(self.server.answer(request))

    def _reply(self, reply: dict[str, Any]) -> None:
        try:
            self.request.sendall(json.dumps(reply).encode() + b"\n")
        except OSError as exc:  # the client went away; the action's effect stands
            self.server.log.info("control: could not send a reply: %s", exc)


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves a :class:`LabControl` on ``path`` until :meth:`close`."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, path: Path, control: LabControl, log: logging.Logger) -> None:
        self.path = path
        self.control = control
        self.log = log
        path.unlink(missing_ok=True)
        old = os.umask(0o177)
        try:
            super().__init__(str(path), _Handler)
        finally:
            os.umask(old)
        path.chmod(0o600)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<ControlServer {self.path}>"

    def answer(self, request: object) -> dict[str, Any]:
        """The reply to one decoded request."""
        if not isinstance(request, dict) or not isinstance(request.get("action"), str):
            return {"ok": False, "kind": "ConfigError",
                    "error": "a control request is an object with an 'action' string"}
        action = request["action"]
        try:
            return {"ok": True, "result": self.control.run(action, request.get("args"))}
        except VboxlabError as exc:
            self.log.info("control: %s failed: %s", action, exc)
            return {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
        except Exception as exc:
            self.log.exception("control: %s failed unexpectedly", action)
            return {"ok": False, "kind": "ControlError",
                    "error": f"{action} failed: {type(exc).__name__}: {exc} (the lab log "
                             "has the details)"}

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self.serve_forever, name="vboxlab-control",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join(timeout=5)
        self.server_close()
        self.path.unlink(missing_ok=True)
