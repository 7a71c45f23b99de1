"""The supervisor of a long-lived lab: ``python -m vboxlab.control.supervisor``, run by ``up``.

It owns the lab as a test run would (its lease names this process, so QEMU and
the fabric die with it and ``vboxlab clean`` removes what a SIGKILL leaves),
builds the topology, serves the control socket, and tears everything down on
``down``, SIGTERM, SIGINT or SIGHUP, or when the process named by
``--until-pid`` ends. Progress and the outcome of the start go to the
``--ready-fd`` pipe as JSON lines (``progress`` and each machine's bring-up steps,
``machine``; then ``ready`` or ``error``),
which ``vboxlab up`` prints; after that the lab log is the only output.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import IO, Any

from vboxlab import procs
from vboxlab.control.actions import LabControl
from vboxlab.control.server import ControlServer
from vboxlab.errors import VboxlabError
from vboxlab.lab import Lab
from vboxlab.labdirs import CONTROL_SOCKET
from vboxlab.labstatus import TOPOLOGY_COPY, UP_FACTS
from vboxlab.net.topology import load_topology

#: how often the supervisor looks whether ``--until-pid`` still runs
WATCH_INTERVAL = 0.5


class _Stop(BaseException):
    """A signal arrived while the lab was being built: unwind and release everything."""


class _Events:
    """JSON lines to ``vboxlab up`` while it waits (from any thread: machines come up on
    threads of their own); silent once it stopped listening."""

    def __init__(self, pipe: IO[str] | None) -> None:
        self._pipe = pipe
        self._lock = threading.Lock()

    def send(self, event: str, **fields: Any) -> None:
        with self._lock:
            if self._pipe is None:
                return
            try:
                self._pipe.write(json.dumps({"event": event, **fields}) + "\n")
                self._pipe.flush()
            except OSError:  # vboxlab up was interrupted: the lab goes on
                self._close()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                self._pipe.close()
            self._pipe = None


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vboxlab.control.supervisor")
    parser.add_argument("--base", required=True, type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--topology", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--accel", default="auto")
    parser.add_argument("--channel", default="auto")
    parser.add_argument("--boot-timeout", type=float, default=120.0)
    parser.add_argument("--parallel", type=int, default=None)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--until-pid", type=int, default=None)
    return parser.parse_args(argv)


def supervise(args: argparse.Namespace, events: _Events) -> int:
    """Build the lab, serve it until told to stop, tear it down; the exit status."""
    stopping = threading.Event()
    building = True

    me = os.getpid()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if os.getpid() != me:
            # a child forked without exec (pyroute2 forks one per namespace it enters, and ends
            # it with SIGTERM) inherits this handler: it must end, never unwind our stack
            os._exit(128 + signum)
        stopping.set()
        if building:
            raise _Stop(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    watched = None
    if args.until_pid is not None:
        watched = (args.until_pid, procs.start_time(args.until_pid))
        if watched[1] is None:
            events.send("error", error=f"--until-pid {args.until_pid}: no such process")
            return 2
    try:
        topology = load_topology(args.topology)
        with Lab(base=args.base, name=args.name, role="up", accel=args.accel,
                 channel=args.channel, boot_timeout=args.boot_timeout,
                 parallel=args.parallel) as lab:
            stderr = os.open(lab.dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                             0o600)
            os.dup2(stderr, 2)  # tracebacks of the supervisor itself land in the lab folder
            os.close(stderr)
            shutil.copyfile(args.topology, lab.dir / TOPOLOGY_COPY)
            (lab.dir / TOPOLOGY_COPY).chmod(0o600)
            facts = {"topology": topology.name, "source": str(args.topology.resolve()),
                     "seed": args.seed, "supervisor": os.getpid()}
            _write_private(lab.dir / UP_FACTS, json.dumps(facts, indent=2) + "\n")
            started = time.monotonic()
            lab.on_bring_up.append(lambda machine, state, at: events.send(
                "machine", name=machine, state=state, at=round(at, 1)))
            events.send("progress", text=f"lab {lab.id}: starting {len(topology.nodes)} "
                                         f"machines of topology {topology.name}")
            network = lab.network(topology, seed=args.seed)
            facts["seed"] = network.seed
            _write_private(lab.dir / UP_FACTS, json.dumps(facts, indent=2) + "\n")
            control = LabControl(lab, network, on_down=stopping.set)
            lab.ledger.add("socket", "control socket", path=str(lab.dir / CONTROL_SOCKET))
            server = ControlServer(lab.dir / CONTROL_SOCKET, control, lab.log)
            server.start()
            building = False
            if stopping.is_set():
                raise _Stop("a signal")
            lab.log.info("lab %s is up (supervisor pid %d, control socket %s)", lab.id,
                         os.getpid(), server.path)
            events.send("ready", lab=lab.id, folder=str(lab.dir), seed=network.seed,
                        socket=str(server.path), machines=sorted(network.machines),
                        took=round(time.monotonic() - started, 1))
            events.close()
            while not stopping.wait(WATCH_INTERVAL):
                if watched is not None and not procs.is_alive(*watched):
                    lab.log.info("process %d ended (--until-pid): taking the lab down",
                                 watched[0])
                    break
            lab.log.info("lab %s going down", lab.id)
            server.close()
        return 0
    except _Stop as stop:
        events.send("error", error=f"stopped by {stop} while the lab was starting")
        return 1
    except VboxlabError as exc:
        events.send("error", error=str(exc))
        return 2
    except OSError as exc:
        events.send("error", error=f"{type(exc).__name__}: {exc}")
        return 2


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    pipe = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    events = _Events(pipe)
    os.chdir("/")
    try:
        return supervise(args, events)
    finally:
        events.close()


if __name__ == "__main__":
    sys.exit(main())
