"""Long-lived labs from the outside: start one (``up``), list them (``status``), end one (``down``).

``up`` checks the topology, starts the supervisor as a process of its own
session (it outlives the command), relays its progress and returns once the
lab answers, or raises the supervisor's own error after it has cleaned up.
``client`` gives the control socket of a lab that is up; the CLI and the
dashboard act on labs only through it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vboxlab.bringup import Listener, check_parallel
from vboxlab.control.protocol import ControlClient
from vboxlab.errors import ConfigError, HostError, VboxlabError
from vboxlab.labdirs import LabRecord, find_lab, list_labs, read_lab, remove_lab
from vboxlab.labstatus import describe_lab
from vboxlab.names import check_name, is_valid_name
from vboxlab.net.topology import load_topology
from vboxlab.paths import private_dir
from vboxlab.waiting import wait_until

#: supervisors this process started and that still run (a long-lived caller, such as the
#: dashboard or the MCP server, must reap them when they end)
_SUPERVISORS: list[subprocess.Popen[bytes]] = []


def _reap() -> None:
    for proc in list(_SUPERVISORS):
        if proc.poll() is not None:
            _SUPERVISORS.remove(proc)


def up(topology_path: Path, base: Path, *, name: str | None = None, seed: int | None = None,
       accel: str = "auto", channel: str = "auto", boot_timeout: float = 120.0,
       parallel: int | None = None, until_pid: int | None = None,
       progress: Callable[[str], None] | None = None,
       on_machine: Listener | None = None) -> dict[str, Any]:
    """Start a lab from a topology under a supervisor; returns its ``ready`` facts.

    ``progress`` is told the supervisor's lines, ``on_machine`` each machine's bring-up
    steps (name, state, seconds since the machines started)."""
    _reap()
    topology = load_topology(topology_path)  # a bad file is reported before anything starts
    if name is None:
        if not is_valid_name(topology.name):
            raise ConfigError(f"topology {topology.name!r} ({topology_path}) is not a valid lab "
                              "name; give one with --name")
        name = topology.name
    check_name(name, "lab")
    if seed is not None and not 0 <= seed < 2 ** 63:
        raise ConfigError(f"--seed {seed}: give an integer from 0 to 2**63-1")
    base = private_dir(base)
    if os.path.lexists(base / name):
        raise ConfigError(f"a lab called {name!r} already exists in {base}; see it with "
                          f"`vboxlab status {name}`, remove it with `vboxlab down {name}`, or "
                          "give another --name")
    argv = [sys.executable, "-m", "vboxlab.control.supervisor", "--base", str(base),
            "--name", name, "--topology", str(topology_path.resolve()), "--accel", accel,
            "--channel", channel, "--boot-timeout", str(boot_timeout)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if parallel is not None:
        argv += ["--parallel", str(check_parallel(parallel, "--parallel"))]
    if until_pid is not None:
        argv += ["--until-pid", str(until_pid)]
    read_end, write_end = os.pipe()
    argv += ["--ready-fd", str(write_end)]
    try:
        proc = subprocess.Popen(argv, pass_fds=(write_end,), start_new_session=True,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    try:
        with os.fdopen(read_end) as events:
            for line in events:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if not isinstance(event, dict):
                    continue
                if event.get("event") == "progress" and progress is not None:
                    progress(str(event.get("text", "")))
                elif event.get("event") == "machine" and on_machine is not None:
                    at = event.get("at")
                    on_machine(str(event.get("name", "")), str(event.get("state", "")),
                               float(at) if isinstance(at, int | float) else 0.0)
                elif event.get("event") == "ready":
                    _SUPERVISORS.append(proc)  # reaped when it ends (no zombie, no warning)
                    return event
                elif event.get("event") == "error":
                    proc.wait(timeout=120)
                    raise VboxlabError(f"lab {name} did not come up: {event.get('error')}")
    except BaseException:
        if proc.poll() is None:  # interrupted: the supervisor cleans up on SIGTERM
            proc.terminate()
            proc.wait(timeout=120)
        raise
    status = proc.wait(timeout=120)
    raise HostError(f"the supervisor of lab {name} ended (exit status {status}) before the lab "
                    f"was up; its log, if it got that far: {base / name / 'lab.log'}")


def client(record: LabRecord) -> ControlClient:
    """The control socket of a lab that is up; a clear error for any other lab."""
    if record.status != "up" or record.control_socket is None:
        what = {"session": f"it belongs to the running test session (pid {record.owner_pid}) "
                           "and is read-only here",
                "kept": "it is a kept lab (use vboxlab snapshots / vboxlab ssh on it)",
                "dead": "its owner is dead (vboxlab clean removes it)"}.get(record.status, "")
        raise ConfigError(f"lab {record.id} is not a `vboxlab up` lab: {what}")
    return ControlClient(record.control_socket)


def status(base: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every lab under ``base`` (or the one called ``name``), live facts included for up labs."""
    records = [find_lab(base, name)] if name is not None else list_labs(base)
    described = []
    for record in records:
        if record.status == "up":
            try:
                described.append(client(record).call("status", reply_timeout=15))
                continue
            except VboxlabError as exc:
                facts = describe_lab(record)
                facts["error"] = f"the supervisor did not answer: {exc}"
                described.append(facts)
                continue
        described.append(describe_lab(record))
    return described


def down(base: Path, name: str, *, timeout: float = 120.0) -> str:
    """Stop an up lab and remove everything (a kept or dead lab is removed directly)."""
    record = find_lab(base, name)
    if record.status == "session":
        raise ConfigError(f"lab {name} belongs to the running test session (pid "
                          f"{record.owner_pid}); it ends with that session")
    if record.status == "up":
        client(record).call("down", reply_timeout=30)

        def gone() -> bool:
            now = read_lab(record.dir)
            return now is None or not now.owner_alive

        wait_until(gone, timeout=timeout, interval=0.2,
                   what=f"the supervisor of lab {name} to take it down")
        _reap()
    leftover = read_lab(record.dir)
    if leftover is not None:
        errors = remove_lab(leftover)
        if errors:
            raise HostError(f"lab {name}: could not release {'; '.join(errors)}")
    return record.status
