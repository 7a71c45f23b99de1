"""The guest agent channel: commands and files over a virtio-serial port, no network, no handshake.

QEMU exposes a ``virtserialport`` named ``org.vboxlab.agent.0`` on a UNIX socket
in the VM's 0700 folder; ``vboxlab-agent`` (``vboxlab/agent/agent.c``, placed in
each VM's initrd) serves it. Every request carries a sequence number that only
grows on the host, and every answer carries its request's number, so answers a
restore replays from the guest's past are dropped instead of mixed in. A request
in flight when the machine is restored fails with a clear error (its answer is
gone with the guest's state); the next request works at once. Readiness is
signalled by the guest: the agent says READY when it starts, and answers HELLO
with the nonce the host sent (which is how the host knows a restore is over).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath

from vboxlab.channels.agent_frames import (
    CHUNK,
    FIRST,
    LAST,
    NOFOLLOW,
    Frame,
    FrameReader,
    Kind,
    encode,
    path_payload,
)
from vboxlab.channels.base import CommandResult, GuestFile
from vboxlab.errors import (
    BootTimeout,
    ChannelError,
    CommandTimeout,
    ConfigError,
    GuestFileNotFound,
    WaitTimeout,
)
from vboxlab.waiting import wait_until

log = logging.getLogger(__name__)

PORT_NAME = "org.vboxlab.agent.0"
#: how often HELLO is repeated while waiting for the agent (a frame the guest
#: half-read before a restore may swallow one)
HELLO_INTERVAL = 0.25
EXIT_GRACE = 5.0  # seconds a closed socket waits for QEMU to be seen gone
#: requests for file transfers (the data flows as fast as the port allows)
FILE_TIMEOUT = 300.0
#: files read at once by read_files
READ_WINDOW = 8
ENOENT = 2


class _Request:
    """One request's answers, in order; an exception ends it."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.answers: queue.SimpleQueue[Frame | BaseException] = queue.SimpleQueue()


def _fields(fmt: str, frame: Frame, name: str) -> tuple[int, ...]:
    """The fixed fields at the start of a guest's answer; a short one is the guest's error."""
    size = struct.calcsize(fmt)
    if len(frame.payload) < size:
        raise ChannelError(f"{name}: the guest agent sent a malformed answer (type "
                           f"{frame.kind}, {len(frame.payload)} bytes, {size} expected)")
    return struct.unpack_from(fmt, frame.payload)


def _entry(raw: bytes, name: str, folder: str) -> str:
    """A folder entry the guest listed, refused if it could leave the folder on the host."""
    entry = raw.decode(errors="surrogateescape")
    if "/" in entry or entry in (".", ".."):
        raise ChannelError(f"{name}: the guest listed {entry!r} in {folder}, which is no file "
                           "name; refusing to copy it (a hostile or broken guest)")
    return entry


def _error_text(frame: Frame) -> tuple[int, str]:
    code = struct.unpack_from("<I", frame.payload)[0] if len(frame.payload) >= 4 else 0
    return code, frame.payload[4:].decode(errors="replace")


class AgentChannel:
    """Commands and files through ``vboxlab-agent`` on the VM's virtio-serial socket."""

    def __init__(self, name: str, socket_path: Path, check_alive: Callable[[], None]) -> None:
        self.name = name
        self.socket_path = socket_path
        self._check_alive = check_alive
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._send_lock = threading.Lock()
        self._life = threading.Lock()
        self._pending: dict[int, _Request] = {}
        self._pending_lock = threading.Lock()
        self._seq = 0
        self._nonce = b""
        self._ready = threading.Event()
        self._last_error = "no attempt yet"
        #: what the agent reported when it last answered HELLO or said READY
        #: (``uptime``: seconds since the guest kernel started; ``init``: when init started)
        self.ready_facts: dict[str, str] = {}
        #: frames dropped as stale (answers to requests nobody waits for any more)
        self.stale_frames = 0

    def __repr__(self) -> str:
        return f"<AgentChannel {self.name} {'connected' if self.connected else 'closed'}>"

    @property
    def connected(self) -> bool:
        return self._sock is not None and self._reader is not None and self._reader.is_alive()

    # -- connection -----------------------------------------------------
    def _try_open(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            self._last_error = f"{self.socket_path}: {exc.strerror or exc}"
            return None
        return sock

    def connect(self, timeout: float) -> None:
        """Wait until the agent answers, or raise BootTimeout after ``timeout``.

        An open connection is kept (after a restore only the guest's side changed):
        a HELLO with a fresh nonce tells when the guest answers again.
        """
        with self._life:
            deadline = time.monotonic() + timeout
            if self.connected:
                self._fail_pending("the channel was re-synchronised")
                self._await_hello(deadline, timeout)
                return
            self._drop("the channel reconnected")
            self.ready_facts = {}
            try:
                sock = wait_until(self._try_open, timeout=timeout,
                                  what=f"the agent socket of {self.name}", interval=0.01,
                                  max_interval=0.1, abort=self._check_alive,
                                  last_seen=lambda: self._last_error)
            except WaitTimeout as exc:
                raise BootTimeout(str(exc)) from None
            self._sock = sock
            self._ready.clear()  # before reading: a READY sent at once must count
            self._reader = threading.Thread(target=self._read_loop, args=(sock,),
                                            name=f"vboxlab-agent-{self.name}", daemon=True)
            self._reader.start()
            self._await_hello(deadline, timeout, fresh=True)

    def _await_hello(self, deadline: float, timeout: float, *, fresh: bool = False) -> None:
        """Send HELLO with a fresh nonce until the agent answers it (or says READY).

        ``fresh``: a new connection, whose READY may already have come.
        """
        if not fresh:
            self._ready.clear()
        self._nonce = os.urandom(8)
        hello = encode(Kind.HELLO, self._next_seq(), self._nonce)
        sent = 0
        while True:
            self._send(hello)
            sent += 1
            remaining = deadline - time.monotonic()
            if self._ready.wait(min(HELLO_INTERVAL, max(0.0, remaining))):
                return
            self._check_alive()
            if not self.connected:
                self._await_exit()
                raise ChannelError(f"{self.name}: QEMU closed the agent socket "
                                   f"{self.socket_path} before the agent answered")
            if time.monotonic() >= deadline:
                self._drop("the agent never answered")
                raise BootTimeout(
                    f"timed out after {timeout:g} s waiting for the guest agent of "
                    f"{self.name} to answer on {self.socket_path}; last try: connected, "
                    f"{sent} HELLO sent, no answer (is the guest still booting? does its "
                    "template start vboxlab-agent and load virtio_console? its console log "
                    "tells)")

    def interrupt(self, reason: str) -> None:
        """Fail the requests in flight with ``reason`` (the guest is about to be rewound);
        the connection stays, and :meth:`connect` re-synchronises it."""
        self._fail_pending(reason)

    def close(self, reason: str = "") -> None:
        """Disconnect; requests still waiting fail with ``reason`` (a stop, a kill...)."""
        with self._life:
            self._drop(reason or "the channel was closed")

    def _drop(self, reason: str) -> None:
        sock, reader = self._sock, self._reader
        self._sock = self._reader = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=5)
        self._fail_pending(reason)

    def _fail_pending(self, reason: str) -> None:
        with self._pending_lock:
            pending, self._pending = self._pending, {}
        for request in pending.values():
            request.answers.put(ChannelError(
                f"{self.name}: {reason} while this request ran, so its answer is lost; the "
                "next command works at once"))

    def _ensure(self, timeout: float) -> None:
        if not self.connected:
            log.info("%s: agent connection lost; reconnecting", self.name)
            self.connect(timeout=max(0.5, min(30.0, timeout)))

    def _next_seq(self) -> int:
        with self._pending_lock:
            self._seq = self._seq % 0xFFFFFFFF + 1
            return self._seq

    def _open(self, timeout: float) -> _Request:
        self._ensure(timeout)
        request = _Request(self._next_seq())
        with self._pending_lock:
            self._pending[request.seq] = request
        return request

    def _forget(self, request: _Request) -> None:
        with self._pending_lock:
            self._pending.pop(request.seq, None)

    def _send(self, data: bytes) -> None:
        sock = self._sock
        if sock is None:
            raise ChannelError(f"{self.name}: the agent channel is closed")
        try:
            with self._send_lock:
                sock.sendall(data)
        except OSError as exc:
            self._await_exit()
            raise ChannelError(f"{self.name}: writing to the agent socket failed: "
                               f"{exc.strerror or exc}") from exc

    def _await_exit(self, grace: float = EXIT_GRACE) -> None:
        """The socket closed: QEMU closes it as it exits, so give the process ``grace``
        seconds to be seen gone (``check_alive`` then raises ``MachineDied`` with the
        console's tail, which says why) before the caller reports a closed channel."""
        end = time.monotonic() + grace
        while True:
            self._check_alive()
            if time.monotonic() >= end:
                return
            time.sleep(0.05)

    def _read_loop(self, sock: socket.socket) -> None:
        reader = FrameReader()
        reason = "QEMU closed the agent socket (the VM stopped or was killed)"
        try:
            while True:
                data = sock.recv(1 << 18)
                if not data:
                    break
                for frame in reader.feed(data):
                    self._dispatch(frame)
        except OSError as exc:
            reason = f"reading the agent socket failed: {exc.strerror or exc}"
        if reader.dropped_bytes:
            log.debug("%s: %d damaged or partial bytes dropped from the agent stream", self.name,
                      reader.dropped_bytes)
        if self._sock is sock:  # not closed on purpose: the other end went away
            self._fail_pending(reason)

    def _dispatch(self, frame: Frame) -> None:
        if frame.kind == Kind.READY or (frame.kind == Kind.HELLO_ACK and
                                        frame.payload[:8] == self._nonce):
            text = frame.payload[8:] if frame.kind == Kind.HELLO_ACK else frame.payload
            for part in text.decode(errors="replace").split():
                key, _, value = part.partition("=")
                if value:
                    self.ready_facts[key] = value
            if frame.kind == Kind.READY:  # a new agent: nothing the old one ran will answer
                self._fail_pending(f"the guest agent of {self.name} restarted")
            self._ready.set()
            return
        with self._pending_lock:
            request = self._pending.get(frame.seq)
        if request is None:
            self.stale_frames += 1
            return
        request.answers.put(frame)

    def _answer(self, request: _Request, deadline: float, what: str) -> Frame:
        """The next answer to ``request``, watching the VM; CommandTimeout past ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandTimeout(f"{self.name}: {what} did not finish in time")
            try:
                item = request.answers.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                self._check_alive()
                continue
            if isinstance(item, BaseException):
                self._check_alive()
                raise item
            return item

    # -- commands -------------------------------------------------------
    def run(self, command: str, timeout: float) -> CommandResult:
        """Run ``command`` in the guest's shell; raise CommandTimeout past ``timeout``."""
        if "\0" in command:
            raise ConfigError(f"{self.name}: command {command!r} holds a NUL character, which "
                              "no shell command can; remove it")
        request = self._open(timeout)
        out: list[bytes] = []
        err: list[bytes] = []
        deadline = time.monotonic() + timeout
        try:
            self._send(encode(Kind.EXEC, request.seq, command.encode()))
            while True:
                try:
                    frame = self._answer(request, deadline, f"command {command!r}")
                except CommandTimeout:
                    with contextlib.suppress(ChannelError):
                        self._send(encode(Kind.KILL, request.seq))
                    raise CommandTimeout(
                        f"{self.name}: command {command!r} did not finish within {timeout:g} "
                        f"s (killed); output so far: "
                        f"{b''.join(out).decode(errors='replace')[-500:]!r}") from None
                if frame.kind == Kind.STDOUT:
                    out.append(frame.payload)
                elif frame.kind == Kind.STDERR:
                    err.append(frame.payload)
                elif frame.kind == Kind.EXIT:
                    rc = _fields("<i", frame, self.name)[0]
                    return CommandResult(command, rc, b"".join(out).decode(errors="replace"),
                                         b"".join(err).decode(errors="replace"))
                elif frame.kind == Kind.ERROR:
                    raise ChannelError(f"{self.name}: the agent could not run {command!r}: "
                                       f"{_error_text(frame)[1]}")
        finally:
            self._forget(request)

    # -- files ----------------------------------------------------------
    def _simple(self, kind: Kind, payload: bytes, what: str, flags: int = 0) -> Frame:
        """Send one request and wait for its single answer; ERROR frames become exceptions."""
        request = self._open(FILE_TIMEOUT)
        try:
            self._send(encode(kind, request.seq, payload, flags))
            frame = self._answer(request, time.monotonic() + FILE_TIMEOUT, what)
            self._raise_error(frame, what)
            return frame
        finally:
            self._forget(request)

    def _raise_error(self, frame: Frame, what: str) -> None:
        if frame.kind != Kind.ERROR:
            return
        code, text = _error_text(frame)
        if code == ENOENT:
            raise GuestFileNotFound(f"{self.name}: {what}: {text} (no such file in the guest)")
        raise ChannelError(f"{self.name}: {what} failed: {text}")

    def put(self, local: Path, remote: str) -> None:
        """Copy a file or a folder tree into the guest, keeping permission bits."""
        if local.is_dir():
            self._put_tree(local, PurePosixPath(remote))
        else:
            self._put_file(local, remote)

    def _put_tree(self, local: Path, remote: PurePosixPath) -> None:
        self._simple(Kind.MKDIR, path_payload(str(remote), struct.pack(
            "<I", local.stat().st_mode & 0o7777)), f"creating {remote}")
        for child in sorted(local.iterdir()):
            if child.is_dir() and not child.is_symlink():
                self._put_tree(child, remote / child.name)
            elif child.is_file():
                self._put_file(child, str(remote / child.name))

    def _put_file(self, local: Path, remote: str) -> None:
        what = f"copying {local} to {remote}"
        mode = local.stat().st_mode & 0o7777
        head = path_payload(remote, struct.pack("<I", mode))
        step = CHUNK - len(head)
        request = self._open(FILE_TIMEOUT)
        try:
            with local.open("rb") as handle:
                flags = FIRST
                while True:
                    data = handle.read(step)
                    if not handle.peek(1):
                        flags |= LAST
                    self._send(encode(Kind.WRITE, request.seq, head + data, flags))
                    if flags & LAST:
                        break
                    flags = 0
                    if not request.answers.empty():  # an early error: stop sending
                        break
            frame = self._answer(request, time.monotonic() + FILE_TIMEOUT, what)
            self._raise_error(frame, what)
        finally:
            self._forget(request)

    def _read(self, remote: str, limit: int, what: str, *,
              sink: Callable[[bytes], object]) -> tuple[int, int, int]:
        """Stream a guest file into ``sink``; returns (mode, size at open, bytes read)."""
        request = self._open(FILE_TIMEOUT)
        try:
            self._send(encode(Kind.READ, request.seq,
                              path_payload(remote, struct.pack("<Q", limit))))
            return self._read_answers(request, what, sink)
        finally:
            self._forget(request)

    def _read_answers(self, request: _Request, what: str,
                      sink: Callable[[bytes], object]) -> tuple[int, int, int]:
        deadline = time.monotonic() + FILE_TIMEOUT
        mode = size = 0
        while True:
            frame = self._answer(request, deadline, what)
            self._raise_error(frame, what)
            if frame.kind == Kind.STAT_REPLY:
                mode, size = _fields("<IQ", frame, self.name)
            elif frame.kind == Kind.DATA:
                sink(frame.payload)
            elif frame.kind == Kind.OK:
                return mode, size, _fields("<Q", frame, self.name)[0]

    def get(self, remote: str, local: Path) -> None:
        """Copy a guest file or folder tree to the host, keeping permission bits."""
        what = f"copying {remote} to {local}"
        partial = local.with_name(f".{local.name}.part")
        try:
            with partial.open("wb") as handle:
                mode, _, _ = self._read(remote, 1 << 62, what, sink=handle.write)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if stat.S_ISDIR(mode):
            partial.unlink()
            local.mkdir(parents=True, exist_ok=True)
            names = self._list(remote)
            for entry in names:
                self.get(f"{remote.rstrip('/')}/{entry}", local / entry)
        elif not stat.S_ISREG(mode):
            partial.unlink()
            raise ChannelError(f"{self.name}: {what}: {remote} is not a regular file or folder")
        else:
            partial.replace(local)
        local.chmod(stat.S_IMODE(mode))

    def _list(self, remote: str) -> list[str]:
        request = self._open(FILE_TIMEOUT)
        names: list[str] = []
        what = f"listing {remote}"
        try:
            self._send(encode(Kind.LIST, request.seq, path_payload(remote)))
            deadline = time.monotonic() + FILE_TIMEOUT
            while True:
                frame = self._answer(request, deadline, what)
                self._raise_error(frame, what)
                if frame.kind == Kind.NAMES:
                    names += [_entry(n, self.name, remote)
                              for n in frame.payload.split(b"\0") if n]
                elif frame.kind == Kind.OK:
                    return sorted(names)
        finally:
            self._forget(request)

    def read_files(self, paths: Sequence[str], limit: int) -> Iterator[GuestFile]:
        """Read regular guest files of at most ``limit`` bytes, several requests in flight."""
        window: list[tuple[str, _Request]] = []
        todo = iter(paths)
        try:
            while True:
                while len(window) < READ_WINDOW:
                    path = next(todo, None)
                    if path is None:
                        break
                    request = self._open(FILE_TIMEOUT)
                    window.append((path, request))
                    self._send(encode(Kind.READ, request.seq,
                                      path_payload(path, struct.pack("<Q", limit)), NOFOLLOW))
                if not window:
                    return
                path, request = window.pop(0)
                yield self._one_file(path, request, limit)
                self._forget(request)
        finally:
            for _, request in window:
                self._forget(request)

    def _one_file(self, path: str, request: _Request, limit: int) -> GuestFile:
        chunks: list[bytes] = []
        try:
            mode, size, count = self._read_answers(request, f"reading {path}", chunks.append)
        except GuestFileNotFound:
            return GuestFile(path, None, "unreadable: No such file or directory")
        except ChannelError as exc:
            if not self.connected:
                raise
            return GuestFile(path, None, f"unreadable: {str(exc).rsplit(': ', 1)[-1]}")
        if not stat.S_ISREG(mode):
            return GuestFile(path, None, "not a regular file")
        if size > limit:
            return GuestFile(path, None, f"{size} bytes, over the {limit} byte limit")
        if count > limit:
            return GuestFile(path, None, f"grew past the {limit} byte limit")
        return GuestFile(path, b"".join(chunks))
