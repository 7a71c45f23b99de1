"""The provider protocol: what a hypervisor must offer to run lab machines."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vboxlab.keys import KeyPair
from vboxlab.ledger import Ledger
from vboxlab.templates import BuiltTemplate


class MachineState(enum.Enum):
    """Where a provider machine is in its life."""

    CREATED = "created"  # defined, never started
    RUNNING = "running"
    STOPPED = "stopped"  # shut down on request
    CRASHED = "crashed"  # ended without being asked to


@dataclass(frozen=True)
class NicSpec:
    """A lab network interface: ``eth1``, ``eth2``, ... of the guest.

    Its frames travel as datagrams over ``fd``, a UDP socket on 127.0.0.1 that
    the lab keeps open and that is connected to the other end (a peer VM's
    socket, or the fabric). With ``vde`` (a vde_switch socket folder) the NIC
    plugs into that switch instead and ``fd`` is unused (-1): for comparisons
    with VDE, as in benchmarks/fabric.py.
    """

    name: str
    mac: str
    fd: int
    address: str | None = None  # CIDR, configured in the guest at boot
    vde: str | None = None


@dataclass(frozen=True)
class BootMedia:
    """Boot from an image instead of the template's kernel: a CD or a USB stick.

    ``path`` is an ISO file, or a block device (a USB stick, a loop device) the
    image was written to; it is attached read-only. ``firmware`` is ``bios``
    (SeaBIOS) or ``uefi`` (OVMF, which wants at least 512 MiB of guest memory).
    """

    path: Path
    kind: str = "cdrom"  # "cdrom" or "usb"
    firmware: str = "bios"  # "bios" or "uefi"

    def __post_init__(self) -> None:
        if self.kind not in ("cdrom", "usb"):
            raise ValueError(f"boot media kind {self.kind!r}: use 'cdrom' or 'usb'")
        if self.firmware not in ("bios", "uefi"):
            raise ValueError(f"firmware {self.firmware!r}: use 'bios' or 'uefi'")


@dataclass(frozen=True)
class MachineSpec:
    """Everything a provider needs to create one machine."""

    name: str
    template: BuiltTemplate
    memory: int
    cpus: int
    workdir: Path
    host_key: KeyPair
    authorized_key: str
    tied: bool  # die with the owning process (False for --lab-keep)
    log: logging.Logger
    nics: tuple[NicSpec, ...] = ()
    hosts: str = ""  # extra /etc/hosts lines
    routes: tuple[tuple[str, str], ...] = ()  # (subnet CIDR, gateway) set at boot
    forward: bool = False  # the guest forwards IPv4 (a router of its topology)
    media: BootMedia | None = None  # boot from this instead of -kernel/-initrd


class ProviderMachine(Protocol):
    """One machine as the provider sees it."""

    name: str
    #: memory and disk can be saved and restored
    can_snapshot: bool
    #: the guest can be asked to power itself off with a command
    powers_off_by_command: bool

    @property
    def console_log(self) -> Path: ...

    def start(self, loadvm: str | None = None) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def kill(self) -> None: ...

    def state(self) -> MachineState: ...

    def check_alive(self) -> None:
        """Raise MachineDied (with the console tail) if the machine is not running."""

    def ssh_endpoint(self) -> tuple[str, int]: ...

    def forward_port(self, guest_port: int) -> int: ...

    def destroy(self) -> None: ...

    def snapshot_save(self, tag: str) -> None: ...

    def snapshot_load(self, tag: str) -> None: ...

    def snapshot_delete(self, tag: str) -> None: ...

    def snapshot_list(self) -> list[dict[str, Any]]: ...


class Provider(Protocol):
    """A hypervisor or other machine factory, found through ``vboxlab.providers``."""

    name: str

    def create(self, spec: MachineSpec, ledger: Ledger) -> ProviderMachine: ...
