"""Processes: identity that survives pid reuse, and children tied to their owner's life."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import IO, TypeVar

T = TypeVar("T")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])


def started_at(pid: int) -> float | None:
    """When the process started, as a Unix time, or None if it is gone."""
    ticks = start_time(pid)
    if ticks is None:
        return None
    try:
        booted = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return time.time() - booted + ticks / os.sysconf("SC_CLK_TCK")


def is_alive(pid: int, started: int | None) -> bool:
    """True if ``pid`` runs and is the same process that started at ``started``."""
    now = start_time(pid)
    if now is None:
        return False
    if _is_zombie(pid):
        return False
    return started is None or now == started


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2:].split()[0] == "Z"


def cmdline(pid: int) -> list[str]:
    """The process's argv, or [] if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_mentioning(marker: str, *, cwd_too: bool = False) -> list[int]:
    """Other processes whose argv mentions ``marker`` (or, with ``cwd_too``, that work in it)."""
    me = os.getpid()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if any(marker in part for part in cmdline(pid)):
            found.append(pid)
        elif cwd_too:
            try:
                if str((entry / "cwd").readlink()).startswith(marker):
                    found.append(pid)
            except OSError:
                continue
    return found


class _Spawner:
    """One long-lived thread that starts every tied child process.

    The kernel's parent-death signal fires when the *thread* that forked the
    child ends, not the process: a VM started from a thread pool would die
    with the pool. Forking from this thread, which lives as long as the
    process, ties children to the process's life whichever thread asks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue[tuple[Callable[[], object], Future[object]]] = \
            queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._owner = 0

    def call(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the spawner thread and return its result (or raise its error)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive() or self._owner != os.getpid():
                self._requests = queue.SimpleQueue()  # after a fork, start afresh
                self._thread = threading.Thread(target=self._serve, name="vboxlab-spawner",
                                                daemon=True)
                self._owner = os.getpid()
                self._thread.start()
            if threading.current_thread() is self._thread:
                return work()
            done: Future[object] = Future()
            self._requests.put((work, done))
        return done.result()  # type: ignore[return-value]

    def _serve(self) -> None:
        requests = self._requests
        while True:
            work, done = requests.get()
            try:
                done.set_result(work())
            except BaseException as exc:
                done.set_exception(exc)


_spawner = _Spawner()


def spawn(argv: Sequence[str], *, tied: bool, stderr: IO[bytes],
          cwd: Path | None = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session; when ``tied``, it is SIGKILLed if we die.

    The tie is the kernel's parent-death signal (through util-linux ``setpriv``,
    so no Python code runs between fork and exec), which fires even when this
    process is SIGKILLed; atexit handlers alone would not. Tied children are
    forked by one thread that lives as long as the process (see ``_Spawner``),
    so a child started from any thread lives until the process ends.
    """
    command = list(argv)
    if tied:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            from vboxlab.errors import HostError

            raise HostError("setpriv not found; it ties VMs to the test run's life. "
                            "Install it with: apt-get install util-linux")
        command = [setpriv, "--pdeathsig", "KILL", "--", *command]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=stderr, cwd=cwd, start_new_session=True,
                                pass_fds=tuple(pass_fds))

    if not tied:
        return start()
    proc = _spawner.call(start)
    _wait_until_tied(proc, command[0])
    return proc


def _wait_until_tied(proc: subprocess.Popen[bytes], setpriv: str, timeout: float = 10.0) -> None:
    """Return once setpriv has set the parent-death signal and run the program.

    Until then the tie does not exist: an owner killed in that window (a few
    milliseconds, longer on a loaded host) would leave the child running. The
    child's argv changes from setpriv's to the program's at that moment.
    """
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        argv = cmdline(proc.pid)
        if argv and argv[0] != setpriv:
            return
        time.sleep(0.001)


def kill(pid: int, started: int | None, grace: float = 0.0) -> bool:
    """Kill ``pid`` if it is still the process that started at ``started``.

    With ``grace``, send SIGTERM first and SIGKILL after that many seconds.
    Returns True if a process was signalled.
    """
    if not is_alive(pid, started):
        return False
    try:
        if grace > 0:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and is_alive(pid, started):
                time.sleep(0.05)
        if is_alive(pid, started):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def spawn_detached(argv: Sequence[str], log: Path) -> int:
    """Start ``argv`` in a new session, not tied to us, stderr to ``log``; returns its pid.

    For processes that must outlive a short-lived caller such as the CLI.
    """
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return os.posix_spawnp(argv[0], list(argv), dict(os.environ), setsid=True, file_actions=[
            (os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, null, 1),
            (os.POSIX_SPAWN_DUP2, out, 2)])
    finally:
        os.close(null)
        os.close(out)


class Adopted:
    """A process known by pid and start time, with the parts of Popen's interface we use.

    For machines of kept labs that a later process (the CLI) acts on. The exit
    status of a process that is not our child is unknown (``returncode`` -1).
    """

    def __init__(self, pid: int, start: int | None) -> None:
        self.pid = pid
        self.start = start
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        try:  # our own child (restarted by this process): reap it, learn its status
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
                return self.returncode
        except ChildProcessError:
            pass
        if not is_alive(self.pid, self.start):
            self.returncode = -1
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            kill(self.pid, self.start)
