"""Bringing up several machines at once: bounded, with progress, failing fast.

A topology's nodes and ``lab.vms({...})`` go through :func:`bring_up`: each
machine is created, started and waited for on a thread of its own, at most
``parallel`` VMs booting at a time (a boot under TCG keeps a core busy; namespace
hosts cost nothing and are not counted). Machines are created (their files
made) before they wait for a slot, so that work overlaps others' boots; a
machine counts against the limit from its start until it answers, and is
configured (boot timeline, after-boot step, hooks) after it gave its slot back.
When one fails, no further machine starts, those booting are killed, and the
error names the machine, why, and its console's last lines. Every step is a
line in the lab log; on a terminal a live line per machine shows where each is.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO

from vboxlab.errors import ConfigError, VboxlabError
from vboxlab.machine import Machine

#: the most machines brought up by one call at once, whatever the limit says
MAX_THREADS = 64
#: console lines a failure shows (a kernel panic's message and its stack trace)
CONSOLE_LINES = 45
#: console lines searched for the kernel's panic line (its stack trace may follow it)
PANIC_LINES = 400


class BringUpError(VboxlabError):
    """A machine of a set did not come up; the others were stopped."""

    def __init__(self, name: str, reason: BaseException, console: str,
                 created: Sequence[Machine] = (), panic: str = "") -> None:
        self.machine = name
        self.reason = reason
        #: the machines of the set that were created (ready, killed or never started)
        self.created = list(created)
        lines = console.strip().splitlines()
        if not lines:
            tail = "\n(its console was empty)"
        elif console.strip() in str(reason):
            tail = ""  # the reason quotes all of it already
        else:
            tail = f"\nits console's last lines:\n{console}"
        if panic and panic not in tail + str(reason):
            tail = f"\nits kernel said: {panic}{tail}"
        super().__init__(f"{name} did not come up, so the machines booting with it were "
                         f"stopped: {reason}{tail}")


@dataclass
class BootStep:
    """One machine to bring up: ``create`` makes it (not started); ``started`` runs right
    after it starts (a topology hands its NICs to the fabric there)."""

    name: str
    create: Callable[[], Machine]
    started: Callable[[Machine], None] = field(default=lambda machine: None)
    counted: bool = True  # a VM; a namespace host is not counted against the limit


def default_parallel(memory_mb: int, available_mb: int) -> int:
    """The host's cores, or fewer if its free memory (``available_mb``) holds fewer VMs of
    ``memory_mb``."""
    cores = os.cpu_count() or 1
    fits = available_mb // max(memory_mb, 64)
    return max(1, min(cores, fits))


def check_parallel(value: object, where: str = "parallel") -> int:
    """A user's limit: a positive integer."""
    try:
        number = int(str(value))
    except ValueError:
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise ConfigError(f"{where}={value!r}: give how many machines may boot at once, a "
                          "whole number from 1 (one after another) up")
    return number


#: what is told of each step: (machine, state, seconds since the set started)
Listener = Callable[[str, str, float], None]


class Board:
    """One line per machine, redrawn in place on a terminal: its state and since when."""

    def __init__(self, stream: IO[str], names: Sequence[str] = ()) -> None:
        self._stream = stream
        self._rows: dict[str, tuple[str, float]] = dict.fromkeys(names, ("waiting", 0.0))
        self._drawn = 0
        if self._rows:
            self._draw()

    def update(self, name: str, state: str, at: float) -> None:
        self._rows[name] = (state, at)
        self._draw()

    def _draw(self) -> None:
        lines = [f"  {row:<20} {was:<10} {since:6.1f} s"
                 for row, (was, since) in self._rows.items()]
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self._stream.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self._stream.flush()
        self._drawn = len(lines)


class Progress:
    """Where each machine of a bring-up is: logged at every change, told to ``listeners``
    (``vboxlab up``'s supervisor passes it on), drawn live on a terminal."""

    def __init__(self, names: Sequence[str], log: logging.Logger, *,
                 stream: IO[str] | None = None, listeners: Sequence[Listener] = ()) -> None:
        self.log = log
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._state = dict.fromkeys(names, ("waiting", 0.0))
        self._since = dict.fromkeys(names, self.started)
        self._board = Board(stream, names) if stream is not None else None
        self._listeners = list(listeners)

    def set(self, name: str, state: str, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            seconds = now - self._since[name]
            self._since[name] = now
            self._state[name] = (state, now - self.started)
            self.log.info("bring-up: %s %s at %.1f s%s%s", name, state, now - self.started,
                          f" ({seconds:.1f} s {self._previous(state)})" if state in
                          ("answering", "configured") else "", f": {detail}" if detail else "")
            if self._board is not None:
                self._board.update(name, state, now - self.started)
            for listener in self._listeners:
                try:
                    listener(name, state, now - self.started)
                except Exception:  # a listener never stops a bring-up
                    self.log.exception("bring-up progress listener failed")

    @staticmethod
    def _previous(state: str) -> str:
        return "booting" if state == "answering" else "after it answered"

    def states(self) -> dict[str, str]:
        with self._lock:
            return {name: state for name, (state, _) in self._state.items()}


def terminal() -> IO[str] | None:
    """stderr if it is a terminal (and VBOXLAB_PROGRESS is not 0), else None."""
    if os.environ.get("VBOXLAB_PROGRESS", "1") == "0":
        return None
    return sys.stderr if sys.stderr.isatty() else None


def bring_up(steps: Sequence[BootStep], *, parallel: int, log: logging.Logger,
             wait_answer: Callable[[Machine], None],
             configure: Callable[[Machine, float], None],
             progress_stream: IO[str] | None = None,
             listeners: Sequence[Listener] = ()) -> dict[str, Machine]:
    """Create, start and wait for every step's machine, ``parallel`` VMs at a time;
    ``wait_answer`` waits for one to answer, ``configure`` finishes it (from its start time);
    ``listeners`` are told each machine's steps.

    Returns the machines by name, in the steps' order. On a failure raises
    :class:`BringUpError` after every thread is done; machines already created
    (ready, killed or never started) are in ``error.created`` for the caller to remove.
    """
    names = [step.name for step in steps]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"machines named twice: {', '.join(twice)}")
    progress = Progress(names, log, stream=progress_stream, listeners=listeners)
    slots = threading.BoundedSemaphore(parallel)
    failed = threading.Event()
    lock = threading.Lock()
    created: dict[str, Machine] = {}
    booting: set[str] = set()
    first_failure: list[tuple[str, BaseException]] = []
    log.info("bring-up: %d machines, at most %d booting at once", len(steps), parallel)

    def stop_the_others(failed_name: str) -> None:
        with lock:
            others = [created[n] for n in booting if n != failed_name]
        for machine in others:
            try:
                machine.kill()
            except Exception:
                log.exception("could not stop %s", machine.name)

    def one(step: BootStep) -> None:
        counted = False
        try:
            # files (overlay, initrd, keys) are made while others boot: only the boot itself
            # waits for a slot
            progress.set(step.name, "creating")
            machine = step.create()
            with lock:
                created[step.name] = machine
            if step.counted:
                while not slots.acquire(timeout=0.2):
                    if failed.is_set():
                        break
                else:
                    counted = True
            with lock:
                if not failed.is_set():
                    booting.add(step.name)
            if failed.is_set():  # another failed first: this one never starts
                progress.set(step.name, "stopped", "another machine failed first")
                return
            started = time.monotonic()
            progress.set(step.name, "booting")
            machine.power_on()
            if failed.is_set():  # one failed while this one started (its kill came too early)
                machine.kill()
                raise VboxlabError("stopped: another machine failed first")
            step.started(machine)
            wait_answer(machine)
            with lock:
                booting.discard(step.name)
            if counted:  # its boot is over: the next one may start while this one is set up
                slots.release()
                counted = False
            progress.set(step.name, "answering")
            configure(machine, started)
            progress.set(step.name, "configured")
        except BaseException as exc:
            with lock:
                booting.discard(step.name)
                first = not first_failure and not failed.is_set()
                if first:
                    first_failure.append((step.name, exc))
            progress.set(step.name, "failed" if first else "stopped", str(exc).splitlines()[0]
                         if str(exc) else type(exc).__name__)
            failed.set()
            if first:
                stop_the_others(step.name)
        finally:
            if counted:
                slots.release()

    with ThreadPoolExecutor(max_workers=min(len(steps), MAX_THREADS) or 1,
                            thread_name_prefix="vboxlab-bringup") as pool:
        for done in [pool.submit(one, step) for step in steps]:
            done.result()
    log.info("bring-up: %s in %.1f s", "failed" if first_failure else "all ready",
             time.monotonic() - progress.started)
    if first_failure:
        name, reason = first_failure[0]
        machine = created.get(name)
        console = machine.console_tail(CONSOLE_LINES) if machine is not None else ""
        longer = machine.console_tail(PANIC_LINES) if machine is not None else ""
        panics = [line.strip() for line in longer.splitlines() if "Kernel panic" in line]
        raise BringUpError(name, reason, console, list(created.values()),
                           panic=panics[-1] if panics else "") from reason
    return {name: created[name] for name in names}
