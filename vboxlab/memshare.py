"""Memory VMs share on this host: the kernel's same-page merging (KSM).

QEMU marks every guest's RAM mergeable (``-machine mem-merge=on``, its default), so
when the host runs KSM, pages that are the same in several VMs (the kernel, the unpacked
initramfs and the libraries of VMs of one template) are kept once. KSM is a host-wide
setting (``/sys/kernel/mm/ksm/run``) that costs a little CPU while it scans; vboxlab
reports it (``vboxlab doctor``) and never switches it on behind the host owner's back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KSM = Path("/sys/kernel/mm/ksm")
#: what the host owner runs to switch KSM on (it is not kept over a reboot)
SWITCH_ON = "echo 1 > /sys/kernel/mm/ksm/run"


@dataclass(frozen=True)
class KsmState:
    """What ``/sys/kernel/mm/ksm`` says: is it there, does it run, what it shares."""

    available: bool
    running: bool = False
    #: pages that other pages were merged into, and how many pages use them
    pages_shared: int = 0
    pages_sharing: int = 0
    full_scans: int = 0

    @property
    def saved_mb(self) -> float:
        """Memory KSM saves now (MiB): each sharing page is one page not kept twice."""
        return self.pages_sharing * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _number(folder: Path, name: str) -> int:
    try:
        return int((folder / name).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def ksm_state(folder: Path = KSM) -> KsmState:
    """KSM's state on this host (``available=False`` where the kernel has none)."""
    if not (folder / "run").is_file():
        return KsmState(available=False)
    return KsmState(available=True, running=_number(folder, "run") == 1,
                    pages_shared=_number(folder, "pages_shared"),
                    pages_sharing=_number(folder, "pages_sharing"),
                    full_scans=_number(folder, "full_scans"))
