"""Rollback: tests leave machines as they found them.

The ``vm`` fixture boots one machine per session (per xdist worker), saves it
as ``clean`` and restores that snapshot after every test that used it.
Machines made with ``lab.vm(..., rollback=True)`` get a baseline when the first
test using the lab starts and are restored to it after every test.
"""

from __future__ import annotations

from vboxlab.errors import VboxlabError
from vboxlab.lab import Lab
from vboxlab.machine import Machine
from vboxlab.providers.base import MachineState

CLEAN = "clean"


class SharedVm:
    """The session's rollback machine behind the ``vm`` fixture."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.machine: Machine | None = None
        self.dirty = False

    def __repr__(self) -> str:
        return f"<SharedVm {self.machine!r} dirty={self.dirty}>"

    def get(self) -> Machine:
        machine = self.machine
        if machine is None or machine.name not in self.lab.machines:
            if "vm" in self.lab.machines:
                self.lab.remove_vm("vm")
            machine = self.lab.vm("vm", rollback=True)
            machine.snapshot(CLEAN, kind="clean")
            machine.baseline = CLEAN
            self.machine = machine
        elif machine.state is not MachineState.RUNNING:
            machine.restore(CLEAN)  # QEMU resumes from the snapshot: no boot
        self.dirty = True
        return machine

    def discard(self) -> None:
        """Give up on this machine (it could not be restored); the next test boots anew."""
        if self.machine is not None and self.machine.name in self.lab.machines:
            self.lab.remove_vm(self.machine.name)
        self.machine = None


def take_baselines(lab: Lab, test: str) -> None:
    """Snapshot rollback machines that have no baseline yet (before the first test uses them)."""
    for machine in list(lab):
        machine.current_test = test
        if machine.rollback and machine.baseline is None and \
                machine.state is MachineState.RUNNING:
            machine.current_test = None
            machine.snapshot(f"baseline-{machine.name}", kind="clean")
            machine.baseline = f"baseline-{machine.name}"
            machine.current_test = test


def roll_back(lab: Lab, shared: SharedVm | None) -> None:
    """Restore every rollback machine to its baseline; a shared VM that cannot be is dropped.

    Every machine is tried even when one fails; the first failure of a machine
    the test itself made is raised at the end.
    """
    failure: VboxlabError | None = None
    for machine in list(lab):
        if not machine.rollback or machine.baseline is None:
            continue
        if shared is not None and machine is shared.machine and not shared.dirty:
            continue
        try:
            machine.restore(machine.baseline)
        except VboxlabError as exc:
            lab.log.warning("%s: rollback to %s failed (%s); it will be booted anew",
                            machine.name, machine.baseline, exc)
            if shared is not None and machine is shared.machine:
                shared.discard()
            elif failure is None:
                failure = exc
    if shared is not None:
        shared.dirty = False
    if failure is not None:
        raise failure
