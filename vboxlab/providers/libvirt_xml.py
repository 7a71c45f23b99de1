"""The libvirt domain XML of a vboxlab VM, made from the same launch description QEMU uses.

The domain is what ``vboxlab.providers.qemu_argv`` gives QEMU directly, said in
libvirt's words: direct kernel boot (qboot's ROM as firmware when there is
one), the overlay disk over the template's image, the serial console to the
VM's ``console.log``, the guest agent's virtio-serial port on ``agent.sock``,
TCG's CPU model with RDRAND, and each lab NIC as an ``<interface type='udp'>``
whose frames go to its fabric port exactly as a QEMU NIC's do (QEMU, started by
libvirtd, binds the NIC's end itself). Only the user-mode network and its SSH
forward go through ``<qemu:commandline>``: libvirt 9.0 forwards ports only with passt,
which it refuses here. Built with ElementTree, so every path is escaped.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from vboxlab.providers.qemu_argv import FW_CFG_NAME, QemuLaunch

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: the user-mode network's id (``hostfwd_add`` names it)
USER_NETDEV = "n0"
#: slots on q35's root bus: the disk 3, the agent's port 4, the user network's NIC 5 (the
#: guest's eth0: the kernel names NICs in slot order), lab NICs from 6 (eth1, eth2, ...) up to
#: 0x1e (0x1f is the ICH9 bridge)
USER_NIC_SLOT = 0x05
FIRST_LAB_NIC_SLOT = 0x06
LAST_LAB_NIC_SLOT = 0x1e
MAX_LAB_NICS = LAST_LAB_NIC_SLOT - FIRST_LAB_NIC_SLOT + 1


@dataclass(frozen=True)
class UdpNic:
    """A lab NIC carried as UDP datagrams: QEMU binds ``local_address:local_port`` and sends
    to ``remote_address:remote_port``, where the fabric's end of the NIC is (both 127.0.0.1
    on this machine; a remote host's address and ours across hosts)."""

    mac: str
    local_port: int
    remote_port: int
    #: where QEMU binds (its host's address) and where the fabric's end is
    local_address: str = "127.0.0.1"
    remote_address: str = "127.0.0.1"


def domain_name(lab_id: str, machine: str) -> str:
    """Unique on the host: the lab's id (time, pid, randomness) and the machine's name."""
    return f"vboxlab-{lab_id}-{machine}"


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    child = ET.SubElement(parent, tag, attrs)
    if text is not None:
        child.text = text
    return child


def _root_slot(device: ET.Element, slot: str) -> None:
    """Put a device on q35's root bus: qboot (unlike SeaBIOS) sets up no PCIe root ports, so
    a device behind one stays powered off in the guest."""
    _sub(device, "address", type="pci", domain="0x0000", bus="0x00", slot=slot, function="0x0")


def domain_xml(launch: QemuLaunch, name: str, *, owner: str, loadvm: str | None = None,
               udp_nics: Sequence[UdpNic] = (), console_pty: bool = False) -> str:
    """The domain's XML; ``owner`` (the lab folder) goes into its description. With
    ``console_pty`` the serial console is a pty read through libvirt's console stream (a
    remote host's files are not this machine's) instead of a file."""
    if len(udp_nics) > MAX_LAB_NICS:
        raise ValueError(f"{launch.name}: {len(udp_nics)} lab NICs; a libvirt machine has "
                         f"slots for {MAX_LAB_NICS}")
    if launch.media is not None:
        raise ValueError("boot media are not supported by the libvirt provider yet")
    if launch.kernel is None or launch.initrd is None:
        raise ValueError(f"{launch.name}: no kernel to boot")
    ET.register_namespace("qemu", QEMU_NS)
    domain = ET.Element("domain", {"type": "kvm" if launch.accel == "kvm" else "qemu"})
    _sub(domain, "name", name)
    _sub(domain, "description", f"vboxlab machine {launch.name} of {owner}")
    _sub(domain, "memory", str(launch.memory), unit="MiB")
    _sub(domain, "vcpu", str(launch.cpus))
    os_ = _sub(domain, "os")
    _sub(os_, "type", "hvm", arch="x86_64", machine="q35")
    if launch.kernel_firmware:
        _sub(os_, "loader", launch.kernel_firmware, type="rom", readonly="yes")
    _sub(os_, "kernel", launch.kernel)
    _sub(os_, "initrd", launch.initrd)
    _sub(os_, "cmdline", launch.cmdline)
    if launch.vm_files is not None:  # the VM's own files, beside the template's shared initrd
        sysinfo = _sub(domain, "sysinfo", type="fwcfg")
        _sub(sysinfo, "entry", name=FW_CFG_NAME, file=launch.vm_files)
    machine_features = _sub(domain, "features")  # without <acpi/>: -no-acpi, and no poweroff
    _sub(machine_features, "acpi")
    _sub(machine_features, "apic")
    if launch.cpu and launch.accel != "kvm":
        model, *features = launch.cpu.split(",")
        cpu = _sub(domain, "cpu", mode="custom", match="exact")
        _sub(cpu, "model", model, fallback="allow")
        for feature in features:
            _sub(cpu, "feature", policy="require" if feature.startswith("+") else "disable",
                 name=feature.lstrip("+-"))
    for event in ("on_poweroff", "on_reboot", "on_crash"):
        _sub(domain, event, "destroy")
    devices = _sub(domain, "devices")
    _sub(devices, "emulator", launch.binary)
    disk = _sub(devices, "disk", type="file", device="disk")
    _sub(disk, "driver", name="qemu", type="qcow2", discard="unmap")
    _sub(disk, "source", file=launch.overlay)
    below = disk
    for path, fmt in [(launch.base_disk, launch.base_format),
                      *((p, "qcow2") for p in launch.base_chain)]:
        below = _sub(below, "backingStore", type="file")  # a layer's chain, explicitly
        _sub(below, "format", type=fmt)
        _sub(below, "source", file=path)
    _sub(below, "backingStore")  # the chain's last image names nothing further
    _sub(disk, "target", dev="vda", bus="virtio")
    _root_slot(disk, "0x03")
    serial = _sub(devices, "serial", type="pty" if console_pty else "file")
    if not console_pty:
        _sub(serial, "source", path=launch.console, append="on")
    _sub(serial, "target", port="0")
    if launch.agent is not None:
        _root_slot(_sub(devices, "controller", type="virtio-serial", index="0"), "0x04")
        channel = _sub(devices, "channel", type="unix")
        _sub(channel, "source", mode="bind", path=launch.agent)
        _sub(channel, "target", type="virtio", name="org.vboxlab.agent.0")
    for index, nic in enumerate(udp_nics):
        interface = _sub(devices, "interface", type="udp")
        _sub(interface, "mac", address=nic.mac)
        source = _sub(interface, "source", address=nic.remote_address, port=str(nic.remote_port))
        _sub(source, "local", address=nic.local_address, port=str(nic.local_port))
        _sub(interface, "model", type="virtio")
        _root_slot(interface, f"{FIRST_LAB_NIC_SLOT + index:#04x}")
    _sub(devices, "controller", type="usb", model="none")
    _sub(devices, "memballoon", model="none")
    restrict = ",restrict=on" if launch.restrict else ""
    args = ["-netdev", f"user,id={USER_NETDEV}{restrict},hostfwd=tcp:127.0.0.1:0-:"
                       f"{launch.ssh_port}",
            "-device", f"virtio-net-pci,netdev={USER_NETDEV},bus=pcie.0,addr={USER_NIC_SLOT:#04x}"]
    if loadvm is not None:
        args += ["-loadvm", loadvm]
    commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
    for arg in args:
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    return ET.tostring(domain, encoding="unicode")
