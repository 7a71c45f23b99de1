"""Run the dashboard: bind, print the URL with its token, serve until interrupted."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from pathlib import Path

import uvicorn

from vboxlab.errors import ConfigError
from vboxlab.paths import private_dir
from vboxlab.web.app import create_app
from vboxlab.web.guard import allowed_hosts, new_token

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port`` (port 0: the kernel picks a free one)."""
    if host == "localhost":
        host = "127.0.0.1"
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise ConfigError(f"--host {host!r}: give an IP address (127.0.0.1 is the default)"
                          ) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port {port}: give a port from 1 to 65535 (0: any free port)")
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another "
                          "--port") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve(base: Path, *, host: str = "127.0.0.1", port: int = 8470,
          announce: Callable[[str], None] = print, token: str | None = None,
          topologies: Path | None = None) -> None:
    """Serve the dashboard for the labs in ``base`` until SIGINT or SIGTERM."""
    base = private_dir(base)
    sock = bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    token = token or new_token()
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    app = create_app(base, token, allowed_hosts(bound_host, bound_port), topologies=topologies)
    if bound_host not in LOOPBACK:
        announce(f"WARNING: the dashboard listens on {bound_host}, beyond this machine; anyone "
                 "who learns the URL below can act on your labs")
    announce(f"vboxlab dashboard for {base}: http://{shown}:{bound_port}/?token={token}")
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2,
                            lifespan="on", access_log=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the SIGINT it shut down for: a normal end
        pass
    finally:
        sock.close()
