"""QEMU's command line for one VM, as a pure function of what the VM is (no I/O).

``QemuLaunch`` holds everything the command line depends on; it is saved in the
VM's ``machine.json`` so that a later process (the CLI acting on a kept lab)
builds the very same command line. Rules the builder keeps:

* every value placed in QEMU's comma-separated options goes through
  :func:`opt`, which doubles commas (QEMU's escape), so a path with a comma is a
  path and never extra options;
* the disk is an overlay whose backing chain is given explicitly: the template
  image is opened read-only with ``"backing": null``, and the overlay's backing
  is that node, so what the image headers say about backing files is never read;
* the user network forwards only what the lab asks for, on 127.0.0.1, and with
  ``restrict`` the guest reaches nothing outside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

DISK_NODE = "disk0"
#: the fw_cfg entry a VM's own files come in (QEMU allows 55 bytes; "opt/" names are users')
FW_CFG_NAME = "opt/org.vboxlab/vm"
#: where a guest reads that entry (the qemu_fw_cfg module's sysfs)
FW_CFG_GUEST_PATH = f"/sys/firmware/qemu_fw_cfg/by_name/{FW_CFG_NAME}/raw"
BASE_NODE = "base0"


def opt(value: object) -> str:
    """``value`` made safe inside a QEMU option list: commas doubled.

    >>> opt("/tmp/a,b/disk.qcow2")
    '/tmp/a,,b/disk.qcow2'
    """
    return str(value).replace(",", ",,")


@dataclass(frozen=True)
class LaunchNic:
    """A lab NIC as QEMU sees it: guest name, MAC, and where its frames go."""

    name: str
    mac: str
    backend: str = "fd"  # "fd": a datagram socket passed in; "vde": a vde_switch;
    # "vhost-user": the fabric's socket at ``vhost``, which QEMU connects to
    vde: str | None = None
    vhost: str | None = None


@dataclass(frozen=True)
class LaunchMedia:
    """Boot media attached read-only (a CD image or a USB stick) and the firmware."""

    path: str
    kind: str  # cdrom | usb
    firmware: str  # bios | uefi
    ovmf: str | None = None


@dataclass(frozen=True)
class QemuLaunch:
    """What a VM's command line is made of; JSON-serialisable (``asdict``/``from_dict``)."""

    name: str
    binary: str
    accel: str
    memory: int
    cpus: int
    overlay: str
    base_disk: str
    base_format: str
    console: str
    qmp: str
    ssh_port: int
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    media: LaunchMedia | None = None
    nics: tuple[LaunchNic, ...] = ()
    restrict: bool = False
    #: the guest agent's UNIX socket (a virtio-serial port); None: SSH only
    agent: str | None = None
    #: the TCG CPU model (None: QEMU's default, as launches saved before it existed)
    cpu: str | None = None
    #: firmware of a direct kernel boot (qboot: no BIOS work before the kernel); None: SeaBIOS
    kernel_firmware: str | None = None
    #: a template whose disk boots itself: "bios" (SeaBIOS) or "uefi" (firmware_code: OVMF)
    disk_boot: str | None = None
    firmware_code: str | None = None
    #: the VM's NoCloud seed image (cloud-init), for templates whose disk boots itself
    seed: str | None = None
    #: a layered template: the qcow2 disks under ``base_disk``, nearest first
    base_chain: tuple[str, ...] = ()
    #: the VM's own files (a cpio) given through fw_cfg; None: they are in ``initrd``
    vm_files: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QemuLaunch:
        values = dict(data)
        media = values.get("media")
        values["media"] = LaunchMedia(**media) if isinstance(media, dict) else None
        values["nics"] = tuple(LaunchNic(**nic) for nic in values.get("nics", ()))
        values["base_chain"] = tuple(str(p) for p in values.get("base_chain", ()))
        return cls(**values)


@dataclass(frozen=True)
class NicWiring:
    """How the lab NICs are plugged in for one start of QEMU.

    ``fds``: the datagram socket of each ``fd`` NIC, in order. ``unplugged``:
    no sockets exist (the lab that owned them ended); each datagram NIC is
    attached to an empty hub of its own, each vhost-user NIC to ``stand_in`` (the
    sockets of a fabric that carries nothing, in order: QEMU restores a vhost-user
    NIC only onto a vhost-user back end), and all come up with their link down.
    """

    fds: tuple[int, ...] = field(default=())
    unplugged: bool = False
    stand_in: tuple[str, ...] = field(default=())


def _boot(launch: QemuLaunch) -> list[str]:
    media = launch.media
    if media is None and launch.disk_boot is not None:
        return ["-bios", launch.firmware_code] if launch.disk_boot == "uefi" and \
            launch.firmware_code else []
    if media is None:
        if launch.kernel is None or launch.initrd is None:
            raise ValueError(f"{launch.name}: neither a kernel nor boot media to boot from")
        firmware = ["-bios", launch.kernel_firmware] if launch.kernel_firmware else []
        own = [] if launch.vm_files is None else \
            ["-fw_cfg", f"name={FW_CFG_NAME},file={opt(launch.vm_files)}"]
        return [*firmware, "-kernel", launch.kernel, "-initrd", launch.initrd,
                "-append", launch.cmdline, *own]
    argv = ["-bios", media.ovmf] if media.firmware == "uefi" and media.ovmf else []
    drive = f"if=none,id=media0,format=raw,readonly=on,file={opt(media.path)}"
    if media.kind == "cdrom":
        return [*argv, "-drive", f"{drive},media=cdrom",
                "-device", "ide-cd,drive=media0,bootindex=0"]
    return [*argv, "-device", "qemu-xhci,id=usb", "-drive", drive,
            "-device", "usb-storage,bus=usb.0,drive=media0,bootindex=0,removable=on"]


def _disk(launch: QemuLaunch) -> list[str]:
    """The template image read-only (a layer: over its base chain, each opened explicitly,
    read-only; the last with no backing), the overlay on top of it.

    JSON syntax: ``"backing": null`` (a real null, which dotted keys cannot say)
    and paths need no escaping at all.
    """
    disks = [(launch.base_disk, launch.base_format),
             *((path, "qcow2") for path in launch.base_chain)]
    nodes: list[dict[str, Any]] = []
    for depth in reversed(range(len(disks))):
        path, fmt = disks[depth]
        node = BASE_NODE if depth == 0 else f"{BASE_NODE}-{depth}"
        below = None if depth == len(disks) - 1 else f"{BASE_NODE}-{depth + 1}"
        nodes += [{"driver": "file", "filename": path, "node-name": f"{node}-file",
                   "read-only": True},
                  {"driver": fmt, "file": f"{node}-file", "node-name": node, "backing": below,
                   "read-only": True}]
    nodes += [
        {"driver": "file", "filename": launch.overlay, "node-name": "file0",
         "cache": {"direct": False, "no-flush": True}},
        {"driver": "qcow2", "file": "file0", "backing": BASE_NODE, "node-name": DISK_NODE},
    ]
    argv: list[str] = []
    for each in nodes:
        argv += ["-blockdev", json.dumps(each, separators=(",", ":"))]
    boot = ",bootindex=0" if launch.disk_boot is not None and launch.media is None else ""
    argv += ["-device", f"virtio-blk-pci,drive={DISK_NODE}{boot}"]
    if launch.seed is not None:
        argv += ["-drive", f"if=none,id=seed0,format=raw,readonly=on,file={opt(launch.seed)}",
                 "-device", "virtio-blk-pci,drive=seed0"]
    return argv


def _nics(launch: QemuLaunch, wiring: NicWiring) -> list[str]:
    argv: list[str] = []
    fds = iter(wiring.fds)
    stand_in = iter(wiring.stand_in)
    for index, nic in enumerate(launch.nics):
        if nic.backend == "vde":
            backend = f"vde,id=lab{index},sock={opt(nic.vde)}"
        elif nic.backend == "vhost-user":
            path = next(stand_in, None) if wiring.unplugged else nic.vhost
            if path is None:
                raise ValueError(f"{launch.name}: no stand-in socket for lab NIC {nic.name}")
            # QEMU connects at start and again after the fabric restarts (reconnect, s)
            argv += ["-chardev", f"socket,id=vu{index},path={opt(path)},reconnect=1"]
            backend = f"vhost-user,id=lab{index},chardev=vu{index}"
        elif wiring.unplugged:
            backend = f"hubport,id=lab{index},hubid={1000 + index}"
        else:
            fd = next(fds, None)
            if fd is None:
                raise ValueError(f"{launch.name}: no socket for lab NIC {nic.name}")
            backend = f"dgram,id=lab{index},local.type=fd,local.str={fd}"
        # QEMU 7.2 dereferences a NULL irqfd table when a vhost NIC's MSI-X vectors are
        # unmasked without KVM (a SIGSEGV as the guest's driver starts): legacy INTx there
        intx = ",vectors=0" if nic.backend == "vhost-user" and launch.accel != "kvm" else ""
        argv += ["-netdev", backend,
                 "-device", f"virtio-net-pci,netdev=lab{index},mac={opt(nic.mac)}{intx}"]
    return argv


AGENT_PORT = "org.vboxlab.agent.0"


def _agent(launch: QemuLaunch) -> list[str]:
    """One virtio-serial port, ``org.vboxlab.agent.0``, on a UNIX socket QEMU listens on."""
    if launch.agent is None:
        return []
    return ["-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=agent,path={opt(launch.agent)},server=on,wait=off",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={AGENT_PORT}"]


def shares_memory(launch: QemuLaunch) -> bool:
    """Guest RAM is a shared memfd when a vhost-user NIC's fabric maps it."""
    return any(n.backend == "vhost-user" for n in launch.nics)


def build_argv(launch: QemuLaunch, wiring: NicWiring = NicWiring(), *,
               loadvm: str | None = None) -> list[str]:
    """QEMU's argv for ``launch``; with ``loadvm``, it resumes from that snapshot."""
    restrict = "on" if launch.restrict else "off"
    shared = shares_memory(launch)
    argv = [
        launch.binary, "-name", f"{opt(launch.name)},process=vboxlab-{opt(launch.name)}",
        "-nodefaults", "-no-user-config",
        "-machine", "q35,memory-backend=ram0" if shared else "q35", "-accel", launch.accel,
        *(["-object", f"memory-backend-memfd,id=ram0,size={launch.memory}M,share=on"]
          if shared else []),
        "-m", str(launch.memory), "-smp", str(launch.cpus), "-display", "none",
        *_boot(launch),
        "-chardev", f"file,id=con,path={opt(launch.console)},append=on",
        "-serial", "chardev:con", "-no-reboot",
        *_disk(launch),
        "-netdev", f"user,id=n0,restrict={restrict},"
                   f"hostfwd=tcp:127.0.0.1:0-:{launch.ssh_port}",
        "-device", "virtio-net-pci,netdev=n0",
        "-chardev", f"socket,id=qmp,path={opt(launch.qmp)},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        *_nics(launch, wiring),
        *_agent(launch),
    ]
    if launch.accel == "kvm":
        argv += ["-cpu", "host"]
    elif launch.cpu is not None:
        argv += ["-cpu", launch.cpu]
    if loadvm is not None:
        argv += ["-loadvm", loadvm]
    return argv
