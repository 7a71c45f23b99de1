"""The provider protocol: what a hypervisor (or namespace host) must offer to run lab machines.

Every provider machine has the same small core (start, stop, kill, state,
console, destroy, a command channel). Everything else is an optional
capability, declared in one place, ``capabilities``; callers ask
:func:`supports` or :func:`require` and never guess from a provider's name or
from the attributes an object happens to have. A machine asked for a
capability it lacks raises :class:`~vboxlab.errors.NotSupported` saying what to
use instead.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vboxlab.errors import ConfigError, NotSupported
from vboxlab.keys import KeyPair
from vboxlab.ledger import Ledger

if TYPE_CHECKING:
    import paramiko

    from vboxlab.channels.base import Channel
    from vboxlab.templates import BuiltTemplate


class MachineState(enum.Enum):
    """Where a provider machine is in its life."""

    CREATED = "created"  # defined, never started
    RUNNING = "running"
    STOPPED = "stopped"  # shut down on request
    CRASHED = "crashed"  # ended without being asked to


class Capability(enum.Enum):
    """Optional things a provider machine can do."""

    SNAPSHOTS = "snapshots"  # save and restore memory, devices and disk
    PORT_FORWARD = "port forwarding"  # expose a guest port on 127.0.0.1
    RESTART = "restart"  # start again after a stop
    BOOT_MEDIA = "boot media"  # boot a CD or USB stick image
    LAB_NICS = "lab NICs"  # interfaces on the lab network fabric
    GUEST_POWEROFF = "guest poweroff"  # the guest may power itself off by command
    ATTACH = "attach"  # a later process can take over a kept machine


@dataclass(frozen=True)
class ProviderOptions:
    """Settings a lab hands every provider; each uses what applies to it."""

    accel: str = "auto"
    #: command channel: "auto" (the template's first, the agent where it has one) or "ssh"
    channel: str = "auto"
    #: the libvirt provider's hypervisor (None: $VBOXLAB_LIBVIRT_URI, else qemu:///system)
    libvirt_uri: str | None = None


@dataclass(frozen=True)
class NicSpec:
    """A lab network interface: ``eth1``, ``eth2``, ... of the guest.

    By default the NIC is a *fabric port*: the provider makes its end and, once
    the machine runs, hands the fabric its descriptor (``fabric_fds``). With
    ``fd`` the NIC uses that datagram socket instead (a direct wire to another
    VM); with ``vde`` (a vde_switch socket folder) it plugs into that switch, for
    comparisons such as benchmarks/fabric.py; with ``vhost`` it is a fabric port the
    fabric already listens for at that path (vhost-user: QEMU connects, the fabric reads
    and writes the guest's rings in its memory; the qemu provider only).
    """

    name: str
    mac: str
    address: str | None = None  # CIDR, configured in the guest at boot
    fd: int | None = None
    vde: str | None = None
    #: a port of a fabric on the machine's own (remote) host: (the UDP port QEMU binds on
    #: that host's 127.0.0.1, the fabric port's); the machine then hands this one nothing
    udp: tuple[int, int] | None = None
    vhost: str | None = None

    @property
    def is_fabric_port(self) -> bool:
        return self.fd is None and self.vde is None and self.udp is None and self.vhost is None


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
            raise ConfigError(f"boot media kind {self.kind!r}: use 'cdrom' or 'usb'")
        if self.firmware not in ("bios", "uefi"):
            raise ConfigError(f"firmware {self.firmware!r}: use 'bios' or 'uefi'")


@dataclass(frozen=True)
class MachineSpec:
    """Everything a provider needs to create one machine."""

    name: str
    workdir: Path
    log: logging.Logger
    tied: bool  # die with the owning process (False for --lab-keep)
    template: BuiltTemplate | None = None  # None for providers that run no image (netns)
    memory: int = 256
    cpus: int = 1
    host_key: KeyPair | None = None
    authorized_key: str = ""
    lab_id: str = ""
    nics: tuple[NicSpec, ...] = ()
    hosts: str = ""  # extra /etc/hosts lines
    routes: tuple[tuple[str, str], ...] = ()  # (subnet CIDR, gateway) set at boot
    forward: bool = False  # the guest forwards IPv4 (a router of its topology)
    media: BootMedia | None = None  # boot from this instead of -kernel/-initrd
    restrict: bool = False  # the guest's user network reaches nothing outside
    kernel_args: str = ""  # added to the template's kernel command line


class ProviderMachine(Protocol):
    """One machine as the provider sees it."""

    name: str
    #: what this machine can do beyond the core (see Capability)
    capabilities: frozenset[Capability]

    @property
    def console_log(self) -> Path: ...

    def start(self, loadvm: str | None = None) -> None: ...

    def stop(self, timeout: float) -> None: ...

    def kill(self) -> None: ...

    def state(self) -> MachineState: ...

    def check_alive(self) -> None:
        """Raise MachineDied (with the console tail) if the machine is not running."""

    def destroy(self) -> None:
        """Stop the machine and delete its files and host resources (sockets, taps)."""

    def detach(self) -> None:
        """Let go of the machine without stopping it: close this process's handles to it."""

    def channel(self, user_key: paramiko.PKey | None) -> Channel:
        """The command channel to this machine (SSH, nsenter, ...)."""

    def shell_hint(self, lab_id: str, base: Path) -> str:
        """A command line a person can use to get a shell in the running machine."""

    def on_ready(self, channel: Channel) -> None:
        """Provider work once the machine first answers (QEMU: keep its kernel log)."""

    def fabric_fds(self) -> list[int]:
        """Descriptors of the fabric-port NICs, in NIC order (valid once started)."""

    def forward_port(self, guest_port: int) -> int: ...

    def snapshot_save(self, tag: str) -> None: ...

    def snapshot_load(self, tag: str) -> None: ...

    def snapshot_delete(self, tag: str) -> None: ...

    def snapshot_list(self) -> list[dict[str, Any]]: ...

    def boot_initrd(self) -> Path:
        """The initrd this machine boots (with its keys), for building boot media."""


class Provider(Protocol):
    """A machine factory found through the ``vboxlab.providers`` entry points."""

    name: str
    #: machines boot from a template image (the lab resolves one for them)
    needs_template: bool

    def preflight(self, names: list[str]) -> None:
        """Raise HostError if this host cannot run machines ``names`` (before any starts)."""

    def create(self, spec: MachineSpec, ledger: Ledger) -> ProviderMachine: ...

    def attach(self, workdir: Path, ledger: Ledger, log: logging.Logger, *,
               unplug_nics: bool = False) -> ProviderMachine:
        """Take over a machine a finished run left in ``workdir`` (a kept lab)."""


def supports(handle: ProviderMachine, capability: Capability) -> bool:
    """True if the machine declares ``capability``."""
    return capability in handle.capabilities


def require(handle: ProviderMachine, capability: Capability, hint: str = "") -> None:
    """Raise NotSupported unless the machine declares ``capability``."""
    if capability not in handle.capabilities:
        raise NotSupported(f"{handle.name} cannot do {capability.value}: its provider lacks "
                           f"it{'; ' + hint if hint else ''}")
