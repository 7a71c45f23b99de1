"""The control socket's wire format and its client.

One request per connection: the client sends one JSON object on one line,
``{"action": NAME, "args": {...}}``, and reads one line back, either
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": TEXT, "kind": ERROR
CLASS}``. Lines are bounded both ways (:data:`MAX_REQUEST`, :data:`MAX_REPLY`):
a peer that sends more is cut off with an error, never buffered without end.
The socket is a file in the lab's 0700 folder, mode 0600, and the server also
checks the peer's user id (``SO_PEERCRED``).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from vboxlab import errors
from vboxlab.errors import ConfigError, HostError, VboxlabError

#: the longest request line the supervisor reads (a command, link settings: small)
MAX_REQUEST = 1 << 20
#: the longest reply line a client reads (a command's output is cut well below it)
MAX_REPLY = 16 << 20


class ControlError(VboxlabError):
    """The supervisor refused or failed an action; the message is its own."""


def read_line(sock: socket.socket, limit: int, what: str) -> bytes:
    """One newline-terminated line from ``sock`` (without the newline), at most ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlError(f"{what}: the other side closed the connection before a whole "
                               "line arrived")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            size += end
        else:
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise ControlError(f"{what}: a line over {limit} bytes; refused")
        if end >= 0:
            return b"".join(chunks)


def _error_class(kind: object) -> type[VboxlabError]:
    """The vboxlab error class a reply names (plain single-message ones only)."""
    found = getattr(errors, str(kind), None) if isinstance(kind, str) else None
    if isinstance(found, type) and issubclass(found, VboxlabError) and \
            found is not errors.GuestCommandError:
        return found
    return ControlError


class ControlClient:
    """Calls actions of the supervisor listening on ``path``."""

    def __init__(self, path: Path, *, timeout: float = 900.0) -> None:
        self.path = path
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ControlClient {self.path}>"

    def call(self, action: str, reply_timeout: float | None = None, **args: Any) -> Any:
        """Run ``action`` with ``args``; returns its result or raises the supervisor's error.

        The reply is awaited ``reply_timeout`` seconds (default: the client's),
        and always longer than an action's own ``timeout`` argument.
        """
        timeout = reply_timeout or self.timeout
        if isinstance(args.get("timeout"), int | float):
            timeout = max(timeout, float(args["timeout"]) + 30)
        request = json.dumps({"action": action, "args": args}).encode() + b"\n"
        if len(request) > MAX_REQUEST:
            raise ConfigError(f"{action}: the request is {len(request)} bytes; the control "
                              f"socket takes at most {MAX_REQUEST}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except OSError as exc:
                raise HostError(f"cannot reach the lab's supervisor at {self.path}: "
                                f"{exc.strerror or exc}; is the lab still up? (vboxlab "
                                "status)") from None
            try:
                sock.sendall(request)
                line = read_line(sock, MAX_REPLY, f"reply to {action}")
            except TimeoutError:
                raise ControlError(f"{action}: no reply from the supervisor in {timeout:g} s"
                                   ) from None
        try:
            reply = json.loads(line)
        except ValueError:
            raise ControlError(f"{action}: the supervisor's reply is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
            raise ControlError(f"{action}: the supervisor's reply has no ok field")
        if not reply["ok"]:
            raise _error_class(reply.get("kind"))(str(reply.get("error", "unknown error")))
        return reply.get("result")
