"""OVF 1.0 descriptors and OVA archives: written for export, read back (untrusted) for import.

An OVA is a POSIX tar holding, in this order (OVF 1.0, DSP0243 section 5.3),
the descriptor ``NAME.ovf``, the manifest ``NAME.mf`` (``SHA1(file)= hex`` for
every other file) and the disks. The descriptor names the disk (a
streamOptimized VMDK), the logical networks, and the hardware as CIM resource
allocation items: CPUs (type 3), memory (4, in MiB), an IDE controller (5), the
disk on it (17) and one Ethernet adapter per NIC (10, E1000). Items list their
fields in the alphabetical order the CIM schema's sequences demand.
"""

from __future__ import annotations

import hashlib
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as defused

from vboxlab.errors import ConfigError

OVF = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
STREAM_VMDK = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"
#: CIM operating system id 96: "Debian 64-Bit"
OS_DEBIAN_64 = "96"
MAX_DESCRIPTOR = 1 << 20
for _prefix, _uri in (("ovf", OVF), ("rasd", RASD), ("vssd", VSSD), ("xsi", XSI)):
    ET.register_namespace(_prefix, _uri)


@dataclass(frozen=True)
class OvfMachine:
    """What a descriptor says about one virtual system and its one disk."""

    name: str
    cpus: int
    memory_mib: int
    disk_file: str
    disk_size: int
    disk_capacity: int
    networks: tuple[str, ...] = field(default=())


def _q(ns: str, tag: str) -> str:
    return f"{{{ns}}}{tag}"


def _item(parent: ET.Element, **fields: str) -> None:
    item = ET.SubElement(parent, _q(OVF, "Item"))
    for name in sorted(fields):  # CIM's sequences are alphabetical
        ET.SubElement(item, _q(RASD, name)).text = fields[name]


def descriptor(machine: OvfMachine) -> bytes:
    """The OVF 1.0 descriptor of ``machine`` as UTF-8 XML."""
    env = ET.Element(_q(OVF, "Envelope"), {_q(OVF, "version"): "1.0",
                                           "{http://www.w3.org/XML/1998/namespace}lang":
                                           "en-US"})
    refs = ET.SubElement(env, _q(OVF, "References"))
    ET.SubElement(refs, _q(OVF, "File"), {_q(OVF, "href"): machine.disk_file,
                                          _q(OVF, "id"): "file1",
                                          _q(OVF, "size"): str(machine.disk_size)})
    disks = ET.SubElement(env, _q(OVF, "DiskSection"))
    ET.SubElement(disks, _q(OVF, "Info")).text = "List of the virtual disks used in the package"
    ET.SubElement(disks, _q(OVF, "Disk"), {_q(OVF, "capacity"): str(machine.disk_capacity),
                                           _q(OVF, "diskId"): "vmdisk1",
                                           _q(OVF, "fileRef"): "file1",
                                           _q(OVF, "format"): STREAM_VMDK})
    nets = ET.SubElement(env, _q(OVF, "NetworkSection"))
    ET.SubElement(nets, _q(OVF, "Info")).text = "Logical networks used in the package"
    for network in machine.networks:
        net = ET.SubElement(nets, _q(OVF, "Network"), {_q(OVF, "name"): network})
        ET.SubElement(net, _q(OVF, "Description")).text = f"Network {network}"
    system = ET.SubElement(env, _q(OVF, "VirtualSystem"), {_q(OVF, "id"): machine.name})
    ET.SubElement(system, _q(OVF, "Info")).text = "A virtual machine exported by vboxlab"
    ET.SubElement(system, _q(OVF, "Name")).text = machine.name
    os_section = ET.SubElement(system, _q(OVF, "OperatingSystemSection"),
                               {_q(OVF, "id"): OS_DEBIAN_64})
    ET.SubElement(os_section, _q(OVF, "Info")).text = "The guest operating system"
    ET.SubElement(os_section, _q(OVF, "Description")).text = "Debian_64"
    hardware = ET.SubElement(system, _q(OVF, "VirtualHardwareSection"))
    ET.SubElement(hardware, _q(OVF, "Info")).text = "Virtual hardware requirements"
    vsys = ET.SubElement(hardware, _q(OVF, "System"))
    for name, text in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                       ("VirtualSystemIdentifier", machine.name),
                       ("VirtualSystemType", "virtualbox-2.2 vmx-07")):
        ET.SubElement(vsys, _q(VSSD, name)).text = text
    _item(hardware, Caption=f"{machine.cpus} virtual CPU", Description="Number of virtual CPUs",
          ElementName=f"{machine.cpus} virtual CPU", InstanceID="1", ResourceType="3",
          VirtualQuantity=str(machine.cpus))
    _item(hardware, AllocationUnits="byte * 2^20", Caption=f"{machine.memory_mib} MB of memory",
          Description="Memory Size", ElementName=f"{machine.memory_mib} MB of memory",
          InstanceID="2", ResourceType="4", VirtualQuantity=str(machine.memory_mib))
    _item(hardware, Address="0", Caption="ideController0", Description="IDE Controller",
          ElementName="ideController0", InstanceID="3", ResourceSubType="PIIX4",
          ResourceType="5")
    _item(hardware, AddressOnParent="0", Caption="disk1", Description="Disk Image",
          ElementName="disk1", HostResource="ovf:/disk/vmdisk1", InstanceID="4", Parent="3",
          ResourceType="17")
    for index, network in enumerate(machine.networks):
        _item(hardware, AddressOnParent=str(index), AutomaticAllocation="true",
              Caption=f"Ethernet adapter on '{network}'", Connection=network,
              ElementName=f"Ethernet adapter on '{network}'", InstanceID=str(5 + index),
              ResourceSubType="E1000", ResourceType="10")
    ET.indent(env)
    document: bytes = ET.tostring(env, encoding="utf-8", xml_declaration=True)
    return document + b"\n"


def read_descriptor(data: bytes, where: str) -> OvfMachine:
    """The machine an (untrusted) OVF 1.x descriptor describes; errors name what is wrong."""
    if len(data) > MAX_DESCRIPTOR:
        raise ConfigError(f"{where}: the OVF descriptor is over 1 MiB")
    try:
        env = defused.fromstring(data)
    except (ET.ParseError, DefusedXmlException) as exc:
        raise ConfigError(f"{where}: the OVF descriptor is not XML: {exc}") from None
    if env.tag != _q(OVF, "Envelope"):
        raise ConfigError(f"{where}: not an OVF 1.x envelope (root {env.tag})")
    files = {f.get(_q(OVF, "id")): f for f in env.iterfind(f"{_q(OVF, 'References')}/"
                                                           f"{_q(OVF, 'File')}")}
    disks = env.findall(f"{_q(OVF, 'DiskSection')}/{_q(OVF, 'Disk')}")
    systems = env.findall(_q(OVF, "VirtualSystem"))
    if len(systems) != 1 or len(disks) != 1:
        raise ConfigError(f"{where}: vboxlab imports one virtual system with one disk; this "
                          f"one has {len(systems)} systems and {len(disks)} disks")
    disk = disks[0]
    ref = files.get(disk.get(_q(OVF, "fileRef")))
    if ref is None:
        raise ConfigError(f"{where}: the disk's fileRef names no file in References")
    href = ref.get(_q(OVF, "href"), "")
    if not href or "/" in href or href.startswith(".") or ref.get(_q(OVF, "compression")):
        raise ConfigError(f"{where}: disk file {href!r} must be a plain name inside the OVA "
                          "(no folders, no compression)")
    cpus, memory = 1, 256
    for item in systems[0].iter(_q(OVF, "Item")):
        kind = item.findtext(_q(RASD, "ResourceType"))
        quantity = item.findtext(_q(RASD, "VirtualQuantity"))
        if kind == "3" and quantity:
            cpus = _number(quantity, "CPUs", where, 1, 64)
        elif kind == "4" and quantity:
            units = (item.findtext(_q(RASD, "AllocationUnits")) or "byte * 2^20").replace(" ", "")
            scale = {"byte*2^20": 1, "MB": 1, "byte*2^30": 1024, "GB": 1024}.get(units)
            if scale is None:
                raise ConfigError(f"{where}: memory in unknown units {units!r}")
            memory = _number(quantity, "memory", where, 64, 65536 // scale) * scale
    networks = tuple(n.get(_q(OVF, "name"), "") for n in env.iterfind(
        f"{_q(OVF, 'NetworkSection')}/{_q(OVF, 'Network')}"))
    return OvfMachine(name=systems[0].get(_q(OVF, "id"), ""), cpus=cpus, memory_mib=memory,
                      disk_file=href, disk_size=_number(ref.get(_q(OVF, "size"), "0"),
                                                        "size", where, 0, 1 << 50),
                      disk_capacity=_number(disk.get(_q(OVF, "capacity"), "0"), "capacity",
                                            where, 0, 1 << 50),
                      networks=networks)


def _number(text: str, what: str, where: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{where}: {what} {text!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{where}: {what} {value} is outside {low}..{high}")
    return value


def sha1_of(path: Path) -> str:
    digest = hashlib.sha1(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_ova(output: Path, ovf_name: str, ovf_data: bytes, disk: Path) -> None:
    """Pack descriptor, SHA1 manifest and disk into ``output`` (POSIX tar, OVF 1.0 order)."""
    stem = ovf_name.removesuffix(".ovf")
    manifest = (f"SHA1({ovf_name})= {hashlib.sha1(ovf_data, usedforsecurity=False).hexdigest()}"
                f"\nSHA1({disk.name})= {sha1_of(disk)}\n").encode()
    with tarfile.open(output, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in ((ovf_name, ovf_data), (f"{stem}.mf", manifest)):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, int(disk.stat().st_mtime)
            tar.addfile(info, BytesIO(data))
        info = tar.gettarinfo(str(disk), arcname=disk.name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o644
        with disk.open("rb") as handle:
            tar.addfile(info, handle)


def read_ova(archive: Path, scratch: Path) -> tuple[OvfMachine, Path]:
    """Unpack an (untrusted) OVA's descriptor and disk into ``scratch``, every file's SHA1
    checked against the manifest; returns the machine and the disk's path."""
    where = str(archive)
    seen: dict[str, str] = {}
    machine: OvfMachine | None = None
    manifest: dict[str, str] | None = None
    try:
        with tarfile.open(archive, mode="r|") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or "/" in name or name.startswith(".") or name in seen:
                    raise ConfigError(f"{where}: member {name!r} is not a plain file at the top "
                                      "(or appears twice); refusing the archive")
                stream = tar.extractfile(member)
                assert stream is not None
                if name.endswith(".ovf"):
                    if seen:
                        raise ConfigError(f"{where}: the descriptor must come first (OVF 1.0)")
                    data = stream.read(MAX_DESCRIPTOR + 1)
                    machine = read_descriptor(data, f"{where}: {name}")
                    seen[name] = hashlib.sha1(data, usedforsecurity=False).hexdigest()
                elif name.endswith(".mf"):
                    manifest = _read_manifest(stream.read(MAX_DESCRIPTOR), f"{where}: {name}")
                    seen[name] = ""
                elif machine is not None and name == machine.disk_file:
                    digest = hashlib.sha1(usedforsecurity=False)
                    target = scratch / "import-disk"
                    with target.open("xb") as out:
                        while chunk := stream.read(1 << 20):
                            digest.update(chunk)
                            out.write(chunk)
                    seen[name] = digest.hexdigest()
                else:
                    raise ConfigError(f"{where}: unexpected member {name!r} (an OVA holds the "
                                      "descriptor, its manifest and the disk it names)")
    except (tarfile.TarError, OSError) as exc:
        raise ConfigError(f"{where}: not a readable OVA (tar): {exc}") from None
    if machine is None or machine.disk_file not in seen:
        raise ConfigError(f"{where}: no descriptor, or the disk it names is missing")
    if manifest is not None:
        for name, sha1 in seen.items():
            if sha1 and manifest.get(name) != sha1:
                raise ConfigError(f"{where}: {name} has SHA1 {sha1}, the manifest says "
                                  f"{manifest.get(name, 'nothing')}: damaged or altered")
    return machine, scratch / "import-disk"


def _read_manifest(data: bytes, where: str) -> dict[str, str]:
    found = {}
    for line in data.decode(errors="replace").splitlines():
        if not line.strip():
            continue
        head, sep, digest = line.partition(")= ")
        if not sep or not head.startswith("SHA1("):
            raise ConfigError(f"{where}: line {line!r} is not 'SHA1(file)= hex' (vboxlab "
                              "checks SHA1 manifests, as OVF 1.0 defines them)")
        found[head[5:]] = digest.strip().lower()
    return found
