"""Snapshot schedules: on failure, after every N tests, and every T seconds while a test runs."""

from __future__ import annotations

import threading

from vboxlab.errors import VboxlabError
from vboxlab.lab import Lab
from vboxlab.machine import Machine
from vboxlab.providers.base import Capability, MachineState, supports
from vboxlab.snapshots import safe_name


def snapshottable(lab: Lab) -> list[Machine]:
    """The lab's running machines whose provider can snapshot them."""
    return [m for m in list(lab)
            if supports(m.handle, Capability.SNAPSHOTS) and m.state is MachineState.RUNNING]


class IntervalSnapshots(threading.Thread):
    """Snapshots the lab's running machines every ``interval`` seconds during one test."""

    def __init__(self, lab: Lab, test: str, interval: float) -> None:
        super().__init__(name="vboxlab-interval-snapshots", daemon=True)
        self.lab = lab
        self.test = test
        self.interval = interval
        self.stopped = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        count = 0
        while not self.stopped.wait(self.interval):
            count += 1
            for machine in snapshottable(self.lab):
                try:
                    machine.snapshot(f"{safe_name(self.test, 40)}-t{count}", kind="interval")
                except Exception as exc:  # reported with the test, never lost in a thread
                    self.errors.append(f"{machine.name}: {type(exc).__name__}: {exc}")

    def finish(self) -> list[str]:
        """Stop and return the errors seen."""
        self.stopped.set()
        self.join(timeout=120)
        return self.errors


def every_n(lab: Lab, done: int, test: str) -> None:
    """The every-N snapshot after test number ``done``; every machine is tried."""
    errors = []
    for machine in snapshottable(lab):
        try:
            machine.snapshot(f"after-{done}-{safe_name(test, 36)}", kind="every-n")
        except VboxlabError as exc:
            errors.append(f"{machine.name}: {exc}")
    if errors:
        raise VboxlabError("every-N snapshot failed: " + "; ".join(errors))


def failure_snapshots(lab: Lab, test: str) -> list[tuple[str, str, str | None]]:
    """Snapshot each machine of a failing test; (machine, snapshot, error or None) each."""
    taken: list[tuple[str, str, str | None]] = []
    name = f"failed-{safe_name(test, 40)}"
    for machine in snapshottable(lab):
        try:
            if name not in machine.snapshots:
                machine.snapshot(name, kind="failure")
                machine.snapshots.set_outcome(test, "failed")
            taken.append((machine.name, name, None))
        except VboxlabError as exc:
            taken.append((machine.name, name, str(exc)))
    return taken
