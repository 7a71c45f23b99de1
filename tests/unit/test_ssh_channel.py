"""SSHChannel's command loop against a scripted paramiko channel: the orders in which
paramiko's thread can deliver output, end of file and exit status."""

from __future__ import annotations

import threading
import time

import pytest

from vboxlab.channels.ssh import SSHChannel
from vboxlab.errors import CommandTimeout


class _Transport:
    def is_active(self) -> bool:
        return True


class ScriptedChannel:
    """A channel whose output, EOF and exit status all arrive at the ``arrive_at``-th call
    of ``recv_ready``: between the command loop's check of its buffers and of its status,
    as paramiko's reader thread may deliver them."""

    def __init__(self, stdout: bytes, stderr: bytes, rc: int, arrive_at: int = 1,
                 endless: bool = False) -> None:
        self._stdout, self._stderr, self._rc = stdout, stderr, rc
        self._arrive_at = arrive_at
        self._endless = endless
        self._calls = 0
        self._out = b""
        self._err = b""
        self._exit: int | None = None
        self.eof_received = False
        self.closed = False
        self.status_event = threading.Event()

    def get_transport(self) -> _Transport:
        return _Transport()

    def settimeout(self, timeout: float) -> None:
        pass

    def exec_command(self, command: str) -> None:
        pass

    def shutdown_write(self) -> None:
        pass

    def recv_ready(self) -> bool:
        self._calls += 1
        if self._endless:  # a new line every other look, for ever
            return self._calls % 2 == 0
        if self._calls == self._arrive_at:  # everything arrives, but this check missed it
            self._out, self._err = self._stdout, self._stderr
            self._exit, self.eof_received = self._rc, True
            return False
        return bool(self._out)

    def recv(self, size: int) -> bytes:
        if self._endless:
            return b"y\n"
        data, self._out = self._out[:size], self._out[size:]
        return data

    def recv_stderr_ready(self) -> bool:
        return bool(self._err)

    def recv_stderr(self, size: int) -> bytes:
        data, self._err = self._err[:size], self._err[size:]
        return data

    def exit_status_ready(self) -> bool:
        return self._exit is not None

    def recv_exit_status(self) -> int:
        assert self._exit is not None
        return self._exit

    def close(self) -> None:
        self.closed = True


def _ssh(channel: ScriptedChannel) -> SSHChannel:
    """An SSHChannel whose sessions are ``channel`` (no connection is made)."""
    ssh = SSHChannel("vm", lambda: ("127.0.0.1", 22), "root", None,  # type: ignore[arg-type]
                     None, lambda: None)  # type: ignore[arg-type]
    ssh._open_session = lambda timeout: channel  # type: ignore[assignment,method-assign,return-value]
    return ssh


@pytest.mark.parametrize("arrive_at", [1, 2, 3])
@pytest.mark.parametrize("stderr", [b"", b"warn\n"])
def test_output_arriving_with_the_exit_status_is_not_lost(arrive_at, stderr):
    channel = ScriptedChannel(b"first\n", stderr, 0, arrive_at=arrive_at)
    result = _ssh(channel)._run("echo first", timeout=10)
    assert (result.rc, result.stdout, result.stderr) == (0, "first\n", stderr.decode())


def test_a_command_that_never_stops_writing_still_times_out():
    with pytest.raises(CommandTimeout, match=r"did not finish within 0\.5 s"):
        _ssh(ScriptedChannel(b"", b"", 0, endless=True))._run("yes", timeout=0.5)


class LateChannel(ScriptedChannel):
    """The exit status comes ``status_after`` seconds after the command started (a busy
    guest), and the output, then EOF, only ``output_after`` seconds later than that."""

    def __init__(self, stdout: bytes, status_after: float, output_after: float) -> None:
        super().__init__(stdout, b"", 0)
        self._started = time.monotonic()
        self._status_at = self._started + status_after
        self._output_at = self._status_at + output_after

    def _arrive(self) -> None:
        now = time.monotonic()
        if now >= self._status_at:
            self._exit = 0
        if now >= self._output_at and not self.eof_received:
            self._out, self.eof_received = self._stdout, True

    def recv_ready(self) -> bool:
        self._arrive()
        return bool(self._out)

    def exit_status_ready(self) -> bool:
        self._arrive()
        return self._exit is not None


def test_output_after_a_late_exit_status_is_waited_for():
    """The grace for output that trails the exit status counts from the status, not from
    the start of the command (on a busy host the status itself can come seconds late)."""
    channel = LateChannel(b"before\n", status_after=0.6, output_after=0.15)
    result = _ssh(channel)._run("cat /root/mark", timeout=10)
    assert (result.rc, result.stdout) == (0, "before\n")
