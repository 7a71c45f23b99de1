"""SSH through paramiko: one persistent, pinned connection per VM that reconnects by itself."""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

import paramiko

from vboxlab.channels.base import CommandResult, GuestFile
from vboxlab.errors import (
    BootTimeout,
    ChannelError,
    CommandTimeout,
    GuestFileNotFound,
    VboxlabError,
    WaitTimeout,
)
from vboxlab.waiting import wait_until

log = logging.getLogger(__name__)
#: paramiko logs every refused attempt while a guest boots as an ERROR with a
#: traceback; those go to their own quiet logger, and the last one is reported
#: in the BootTimeout message instead.
PARAMIKO_LOG = "vboxlab.ssh.paramiko"
logging.getLogger(PARAMIKO_LOG).setLevel(logging.CRITICAL)

#: exit status reported when the guest closed a command's channel without one
NO_EXIT_STATUS = -1
#: after a command's exit status, how long output may pause before it counts as complete
#: when no end of file comes (a background process holds the command's stdout)
OUTPUT_GRACE = 0.3


class SSHChannel:
    """Commands over SSH to ``host:port``, with the guest's host key pinned.

    ``endpoint`` is asked for host and port at every (re)connect, since a VM
    restart may change its forwarded port; ``check_alive`` raises when the VM
    is gone, so that waits end within a second instead of at their timeout.
    The host key is pinned through paramiko's RejectPolicy: an unknown or
    changed key is refused, never learned.
    """

    def __init__(self, name: str, endpoint: Callable[[], tuple[str, int]], user: str,
                 user_key: paramiko.PKey, host_key: paramiko.PKey,
                 check_alive: Callable[[], None]) -> None:
        self.name = name
        self._endpoint = endpoint
        self._user = user
        self._user_key = user_key
        self._host_key = host_key
        self._check_alive = check_alive
        self._transport: paramiko.Transport | None = None
        self._lock = threading.Lock()
        self._last_error = "no attempt yet"

    # -- connection -----------------------------------------------------
    def _try_connect(self) -> paramiko.Transport | None:
        host, port = self._endpoint()
        sock: socket.socket | None = None
        transport: paramiko.Transport | None = None
        try:
            sock = socket.create_connection((host, port), timeout=2)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock)
            transport.set_log_channel(PARAMIKO_LOG)
            transport.banner_timeout = 3
            transport.start_client(timeout=5)
            offered = transport.get_remote_server_key()
            if offered != self._host_key:
                transport.close()
                raise ChannelError(
                    f"{self.name}: the SSH host key at {host}:{port} is "
                    f"{offered.get_name()} {offered.get_base64()[:24]}..., not the key pinned for "
                    "this VM; refusing to connect (something else answers on that port)")
            transport.auth_publickey(self._user, self._user_key)
            transport.set_keepalive(2)
            return transport
        except ChannelError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            self._last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if transport is not None:
                transport.close()
            elif sock is not None:
                sock.close()
            return None

    def connect(self, timeout: float) -> None:
        """Connect (again), retrying until the guest answers or ``timeout`` passes."""
        with self._lock:
            self._drop()
            try:
                self._transport = wait_until(
                    self._try_connect, timeout=timeout, what=f"SSH on {self.name}",
                    interval=0.05, max_interval=0.25, abort=self._check_alive,
                    last_seen=lambda: self._last_error)
            except WaitTimeout as exc:
                raise BootTimeout(str(exc)) from None

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def _live_transport(self, timeout: float = 30.0) -> paramiko.Transport:
        transport = self._transport
        if transport is None or not transport.is_active():
            log.info("%s: SSH connection lost; reconnecting", self.name)
            self.connect(timeout=max(0.5, min(30.0, timeout)))
            transport = self._transport
        assert transport is not None
        return transport

    def interrupt(self, reason: str) -> None:
        """A restore rewinds the guest's TCP state: the connection cannot survive it."""
        self.close(reason)

    def close(self, reason: str = "") -> None:
        with self._lock:
            self._drop()

    # -- commands -------------------------------------------------------
    def run(self, command: str, timeout: float) -> CommandResult:
        """Run ``command`` with ``sh -c`` in the guest; raise CommandTimeout past ``timeout``."""
        try:
            return self._run(command, timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            self._check_alive()
            raise ChannelError(f"{self.name}: SSH failed while running {command!r}: "
                               f"{type(exc).__name__}: {exc}") from exc

    def _open_session(self, timeout: float) -> paramiko.Channel:
        transport = self._live_transport(timeout)
        try:
            return transport.open_session(timeout=min(10.0, max(1.0, timeout)))
        except (paramiko.SSHException, EOFError, OSError):
            self._check_alive()
            self._drop_quietly()
            return self._live_transport(timeout).open_session(timeout=min(10.0, max(1.0,
                                                                                     timeout)))

    def _drop_quietly(self) -> None:
        with self._lock:
            self._drop()

    def _run(self, command: str, timeout: float) -> CommandResult:
        chan = self._open_session(timeout)
        transport = chan.get_transport()
        assert transport is not None
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        last_data = time.monotonic()
        exited_at: float | None = None  # when the exit status was first seen
        try:
            chan.settimeout(0.2)
            chan.exec_command(command)
            chan.shutdown_write()
            while True:
                # what the channel had seen is read before its buffers are drained: paramiko's
                # thread may deliver the output, EOF and exit status between the two, and
                # checking them after the drain would end the command with its output unread
                exited, eof = chan.exit_status_ready(), chan.eof_received
                ended = chan.closed or not transport.is_active()
                if exited and exited_at is None:
                    exited_at = time.monotonic()
                progressed = False
                while chan.recv_ready():
                    out.append(chan.recv(65536))
                    progressed = True
                while chan.recv_stderr_ready():
                    err.append(chan.recv_stderr(65536))
                    progressed = True
                if progressed:
                    last_data = time.monotonic()
                # sshd may send the exit status before the last of the output: the command
                # is done at EOF, or once output has been quiet for a moment after its exit
                # (a background process it started may hold stdout open for ever). The moment
                # counts from the exit status too: on a busy host the status may come long
                # after the command started, with its output still on the way (CI: cat gave
                # '' with exit 0 right after a restore on libvirt-remote)
                quiet_since = max(last_data, exited_at or last_data)
                if not progressed and (ended or (exited and (
                        eof or time.monotonic() - quiet_since > OUTPUT_GRACE))):
                    break
                if time.monotonic() > deadline:
                    raise CommandTimeout(
                        f"{self.name}: command {command!r} did not finish within {timeout:g} s; "
                        f"output so far: {b''.join(out).decode(errors='replace')[-500:]!r}")
                if not progressed:
                    self._check_alive()
                    chan.status_event.wait(0.05)
            rc = chan.recv_exit_status() if chan.exit_status_ready() else NO_EXIT_STATUS
        finally:
            chan.close()
        if rc == NO_EXIT_STATUS:
            self._check_alive()
            raise ChannelError(f"{self.name}: the SSH connection ended while {command!r} ran, "
                               "without an exit status (did the command stop sshd or the VM?)")
        return CommandResult(command, rc, b"".join(out).decode(errors="replace"),
                             b"".join(err).decode(errors="replace"))

    # -- files ----------------------------------------------------------
    @contextlib.contextmanager
    def _sftp(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session; paramiko's errors come out as vboxlab's."""
        try:
            sftp = paramiko.SFTPClient.from_transport(self._live_transport())
            assert sftp is not None
            with sftp:
                yield sftp
        except VboxlabError:
            raise
        except FileNotFoundError as exc:
            raise GuestFileNotFound(f"{self.name}: {what}: {exc.filename or exc} does not "
                                    "exist in the guest") from None
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                raise GuestFileNotFound(f"{self.name}: {what}: no such file in the guest "
                                        f"({exc})") from None
            self._check_alive()
            raise ChannelError(f"{self.name}: {what} failed: {type(exc).__name__}: "
                               f"{exc}") from exc
        except (paramiko.SSHException, EOFError) as exc:
            self._check_alive()
            raise ChannelError(f"{self.name}: {what} failed: {type(exc).__name__}: "
                               f"{exc}") from exc

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or a folder tree into the guest, keeping permission bits."""
        with self._sftp(f"copying {local} to {remote}") as sftp:
            if local.is_dir():
                self._put_tree(sftp, local, PurePosixPath(remote))
            else:
                sftp.put(str(local), remote)
                sftp.chmod(remote, local.stat().st_mode & 0o7777)

    def _put_tree(self, sftp: paramiko.SFTPClient, local: Path, remote: PurePosixPath) -> None:
        with contextlib.suppress(OSError):  # it may exist already
            sftp.mkdir(str(remote))
        for child in sorted(local.iterdir()):
            if child.is_dir() and not child.is_symlink():
                self._put_tree(sftp, child, remote / child.name)
            elif child.is_file():
                sftp.put(str(child), str(remote / child.name))
                sftp.chmod(str(remote / child.name), child.stat().st_mode & 0o7777)
        sftp.chmod(str(remote), local.stat().st_mode & 0o7777)

    def get(self, remote: str, local: Path) -> None:
        """Copy a file or a folder tree out of the guest, keeping permission bits."""
        with self._sftp(f"copying {remote} to {local}") as sftp:
            self._get_any(sftp, remote, local)

    def read_files(self, paths: Sequence[str], limit: int) -> Iterator[GuestFile]:
        """Read regular guest files of at most ``limit`` bytes over one SFTP session."""
        with self._sftp(f"reading {len(paths)} guest files") as sftp:
            for path in paths:
                try:
                    attrs = sftp.lstat(path)
                    size = attrs.st_size or 0
                    if not stat.S_ISREG(attrs.st_mode or 0):
                        yield GuestFile(path, None, "not a regular file")
                        continue
                    if size > limit:
                        yield GuestFile(path, None, f"{size} bytes, over the {limit} byte limit")
                        continue
                    with sftp.open(path, "rb") as handle:
                        handle.prefetch(size)
                        data = handle.read(limit + 1)
                except OSError as exc:  # gone meanwhile, or not readable
                    yield GuestFile(path, None, f"unreadable: {exc.strerror or exc}")
                    continue
                if len(data) > limit:
                    yield GuestFile(path, None, f"grew past the {limit} byte limit")
                else:
                    yield GuestFile(path, data)

    def _get_any(self, sftp: paramiko.SFTPClient, remote: str, local: Path) -> None:
        mode = sftp.stat(remote).st_mode or 0
        if stat.S_ISDIR(mode):
            local.mkdir(parents=True, exist_ok=True)
            for entry in sftp.listdir(remote):
                self._get_any(sftp, f"{remote.rstrip('/')}/{entry}", local / entry)
        else:
            sftp.get(remote, str(local))
        local.chmod(stat.S_IMODE(mode))
