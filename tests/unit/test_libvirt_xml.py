"""The libvirt domain XML a launch becomes: the same machine QEMU would run, paths escaped."""

import xml.etree.ElementTree as ET

import pytest

from vboxlab.providers.libvirt_xml import QEMU_NS, UdpNic, domain_name, domain_xml
from vboxlab.providers.qemu_argv import LaunchMedia

from .test_qemu_argv import launch


def parsed(**changes):
    return ET.fromstring(domain_xml(launch(**changes), "vboxlab-lab-vm", owner="/labs/x"))


def test_the_domain_boots_the_same_kernel_disk_console_and_agent():
    root = parsed(agent="/labs/x/vm/agent.sock", kernel_firmware="/usr/share/qemu/qboot.rom",
                  cpu="qemu64,+rdrand")
    assert root.get("type") == "qemu" and root.findtext("name") == "vboxlab-lab-vm"
    assert root.find("features/acpi") is not None  # else libvirt adds -no-acpi: no poweroff
    assert root.findtext("os/loader") == "/usr/share/qemu/qboot.rom"
    assert root.find("cpu/feature").attrib == {"policy": "require", "name": "rdrand"}
    disk = root.find("devices/disk")
    assert disk.find("backingStore/backingStore") is not None  # the chain ends at the image
    assert disk.find("address").get("bus") == "0x00"  # qboot sets up no root ports
    channel = root.find("devices/channel")
    assert channel.find("target").get("name") == "org.vboxlab.agent.0"
    assert channel.find("source").get("path") == "/labs/x/vm/agent.sock"
    args = [a.get("value") for a in root.find(f"{{{QEMU_NS}}}commandline")]
    assert args[1].startswith("user,id=n0,hostfwd=tcp:127.0.0.1:0-:22")


def test_the_vms_own_files_are_a_fw_cfg_entry_beside_the_shared_initrd():
    root = parsed(initrd="/cache/initrds/tiny-0123.cpio", vm_files="/labs/x/vm/vm-files.cpio")
    assert root.findtext("os/initrd") == "/cache/initrds/tiny-0123.cpio"
    entry = root.find("sysinfo[@type='fwcfg']/entry")
    assert entry.attrib == {"name": "opt/org.vboxlab/vm", "file": "/labs/x/vm/vm-files.cpio"}
    assert parsed().find("sysinfo") is None  # a VM whose initrd holds its files


def test_paths_are_escaped_never_markup():
    root = parsed(overlay="/labs/a'<b>&\"c/disk.qcow2", console="/labs/<x>/console.log")
    assert root.find("devices/disk/source").get("file") == "/labs/a'<b>&\"c/disk.qcow2"
    assert root.find("devices/serial/source").get("path") == "/labs/<x>/console.log"


def test_kvm_restrict_and_loadvm():
    root = parsed(accel="kvm", restrict=True, cpu="qemu64,+rdrand")
    assert root.get("type") == "kvm" and root.find("cpu") is None
    args = [a.get("value") for a in root.find(f"{{{QEMU_NS}}}commandline")]
    assert ",restrict=on," in args[1]
    resumed = ET.fromstring(domain_xml(launch(), "d", owner="o", loadvm="snap-1"))
    assert [a.get("value") for a in resumed.find(f"{{{QEMU_NS}}}commandline")][-2:] == \
        ["-loadvm", "snap-1"]


def test_what_it_cannot_do_is_refused():
    with pytest.raises(ValueError, match="boot media"):
        domain_xml(launch(media=LaunchMedia("/x.iso", "cdrom", "bios")), "d", owner="o")
    assert domain_name("1128-1-ab", "web") == "vboxlab-1128-1-ab-web"


def test_lab_nics_are_udp_interfaces_after_the_user_nic():
    nics = [UdpNic("52:54:00:00:00:0a", 40001, 40002), UdpNic("52:54:00:00:00:0b", 40003, 40004)]
    root = ET.fromstring(domain_xml(launch(), "vboxlab-lab-vm", owner="/labs/x", udp_nics=nics))
    interfaces = root.findall("devices/interface")
    assert [i.get("type") for i in interfaces] == ["udp", "udp"]
    first = interfaces[0]
    assert first.find("mac").get("address") == "52:54:00:00:00:0a"
    assert first.find("source").attrib == {"address": "127.0.0.1", "port": "40002"}
    assert first.find("source/local").attrib == {"address": "127.0.0.1", "port": "40001"}
    args = [a.get("value") for a in root.find(f"{{{QEMU_NS}}}commandline")]
    user_slot = int(args[3].rsplit("addr=", 1)[1], 16)
    slots = [int(i.find("address").get("slot"), 16) for i in interfaces]
    assert user_slot < slots[0] < slots[1]  # the guest names NICs in slot order: eth0 first
    with pytest.raises(ValueError, match="slots for"):
        domain_xml(launch(), "vboxlab-lab-vm", owner="/labs/x", udp_nics=nics * 13)
