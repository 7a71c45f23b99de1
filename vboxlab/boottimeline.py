"""Where a boot's time went: firmware and kernel loading, kernel, userspace, agent, first command.

The host knows when QEMU started and when the guest first answered; the guest
agent's READY says, in seconds since its kernel started, what the time was then
(``uptime``), when the kernel ran the first userspace program (``userspace``,
"Run /init" in the kernel log) and when the agent itself started (``agent``).
Together they split a boot into phases without parsing the console.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BootTimeline:
    """Seconds of each phase of one boot, as measured from the host and the guest.

    >>> t = BootTimeline(started=10.0, answered=14.0, uptime=3.5, userspace=2.0, agent=3.4,
    ...                  first_command=0.01)
    >>> t.phases()["userspace to agent start"]
    1.4
    >>> t.describe().split("; ")[1]
    'answered 4.00 s after QEMU started'
    """

    started: float
    answered: float
    uptime: float
    userspace: float | None
    agent: float
    first_command: float | None = None

    @classmethod
    def from_facts(cls, started: float, answered: float, facts: dict[str, str],
                   first_command: float | None = None) -> BootTimeline | None:
        """From the agent's READY facts; None when they are missing or make no sense."""
        try:
            uptime, agent = float(facts["uptime"]), float(facts["agent"])
            userspace: float | None = float(facts.get("userspace", "-1"))
        except (KeyError, ValueError):
            return None
        if userspace is not None and not 0 <= userspace <= agent:
            userspace = None
        if not 0 <= agent <= uptime or uptime > answered - started + 1.0:
            return None
        return cls(started, answered, uptime, userspace, agent, first_command)

    def phases(self) -> dict[str, float]:
        """Phase name -> seconds, in boot order."""
        phases = {"firmware and kernel loading":
                  round(max(0.0, self.answered - self.started - self.uptime), 3)}
        if self.userspace is not None:
            phases["kernel"] = round(self.userspace, 3)
            phases["userspace to agent start"] = round(self.agent - self.userspace, 3)
        else:
            phases["kernel and userspace to agent start"] = round(self.agent, 3)
        phases["agent start to ready"] = round(self.uptime - self.agent, 3)
        if self.first_command is not None:
            phases["first command"] = round(self.first_command, 3)
        return phases

    @property
    def total(self) -> float:
        return self.answered - self.started

    def describe(self) -> str:
        parts = [f"{name} {seconds:.2f} s" for name, seconds in self.phases().items()]
        return f"{', '.join(parts)}; answered {self.total:.2f} s after QEMU started"
