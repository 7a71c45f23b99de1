"""``vboxlab export``: a machine's disk, as it is or as it was at a snapshot, for other hypervisors.

The disk is the machine's overlay read through its template's image (so the
result stands alone), converted by ``qemu-img`` (``-l snapshot.name=`` for a
snapshot). A running machine is made consistent first: the guest flushes its
file systems (``sync``), QEMU is paused for the copy and resumed afterwards,
whatever happens. ``ova`` packs a streamOptimized VMDK with an OVF 1.0
descriptor (CPUs, memory, NICs and disk from the machine's launch) and a SHA1
manifest. The result is written beside the target and renamed into place, so a
failed export leaves no partial file.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vboxlab.errors import ConfigError, NotSupported
from vboxlab.machine import Machine
from vboxlab.migrate.images import Progress, convert
from vboxlab.migrate.ovf import OvfMachine, descriptor, write_ova
from vboxlab.providers.base import MachineState
from vboxlab.providers.qemu import QemuMachine

EXPORT_FORMATS = ("qcow2", "vmdk", "vdi", "vhdx", "ova")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    size: int
    snapshot: str | None


def _disk_of(machine: Machine) -> QemuMachine:
    handle = machine.handle
    if not isinstance(handle, QemuMachine) or not handle.overlay.is_file():
        raise NotSupported(f"{machine.name}: export needs a machine whose disk is on this host "
                           f"(qemu or local libvirt provider); this one is {handle!r}")
    return handle


@contextlib.contextmanager
def _quiesced(machine: Machine, handle: QemuMachine) -> Iterator[bool]:
    """The guest's writes flushed and QEMU paused for the block (True) if it runs."""
    if handle.state() is not MachineState.RUNNING:
        yield False
        return
    machine.succeed("sync")
    handle.qmp("stop")
    try:
        yield True
    finally:
        handle.qmp("cont")


def export_machine(machine: Machine, fmt: str, output: Path, *, snapshot: str | None = None,
                   replace: bool = False, progress: Progress | None = None) -> ExportResult:
    """Write ``machine``'s disk (at ``snapshot`` if given) to ``output`` in ``fmt``."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(f"export format {fmt!r}: choose one of {', '.join(EXPORT_FORMATS)}")
    handle = _disk_of(machine)
    output = Path(output)
    if output.exists() and not replace:
        raise ConfigError(f"{output} exists; choose another -o or replace it with --force")
    if not output.parent.is_dir():
        raise ConfigError(f"{output.parent} is not a folder; create it first")
    if snapshot is not None:
        known = [s["name"] for s in handle.snapshot_list()]
        if snapshot not in known:
            raise ConfigError(f"{machine.name} has no snapshot {snapshot!r}; it has: "
                              f"{', '.join(known) or 'none'}")
    partial = output.with_name(f".{output.name}.partial")
    with tempfile.TemporaryDirectory(prefix=".vboxlab-export-", dir=output.parent) as scratch:
        try:
            disk = Path(scratch) / f"{machine.name}-disk1.vmdk" if fmt == "ova" else partial
            with _quiesced(machine, handle) as paused:
                convert(handle.overlay, "qcow2", disk,
                        "stream-vmdk" if fmt == "ova" else fmt, snapshot=snapshot,
                        force_share=paused or snapshot is not None, progress=progress)
            if fmt == "ova":
                _pack_ova(machine, handle, disk, partial)
            partial.replace(output)
        finally:
            partial.unlink(missing_ok=True)
    log.info("exported %s%s as %s to %s", machine.name,
             f" at snapshot {snapshot}" if snapshot else "", fmt, output)
    return ExportResult(output, fmt, output.stat().st_size, snapshot)


def _pack_ova(machine: Machine, handle: QemuMachine, disk: Path, output: Path) -> None:
    from vboxlab.templates.trust import qemu_img_info

    capacity = int(qemu_img_info(disk, str(disk), "vmdk")["virtual-size"])
    networks = ("nat", *(nic.name for nic in handle.launch.nics))
    spec = OvfMachine(name=machine.name, cpus=handle.launch.cpus,
                      memory_mib=handle.launch.memory, disk_file=disk.name,
                      disk_size=disk.stat().st_size, disk_capacity=capacity,
                      networks=networks)
    write_ova(output, f"{machine.name}.ovf", descriptor(spec), disk)


def progress_printer(echo: Callable[[str], None]) -> Progress:
    """A progress callback printing every 10 % step once."""
    shown = [-10.0]

    def report(percent: float) -> None:
        if percent >= shown[0] + 10 or percent >= 100 > shown[0]:
            shown[0] = percent
            echo(f"{percent:5.1f} %")
    return report

