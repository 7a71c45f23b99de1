"""OVF descriptors: what vboxlab writes reads back the same, and hostile descriptors are
refused with a message naming the problem."""

import pytest

from vboxlab.errors import ConfigError
from vboxlab.migrate.ovf import OvfMachine, descriptor, read_descriptor

MACHINE = OvfMachine(name="web", cpus=2, memory_mib=768, disk_file="web-disk1.vmdk",
                     disk_size=12345, disk_capacity=64 << 20, networks=("nat", "eth1"))


def test_a_written_descriptor_reads_back_the_same():
    assert read_descriptor(descriptor(MACHINE), "web.ovf") == MACHINE


def test_items_list_their_fields_in_the_order_the_cim_schema_wants():
    text = descriptor(MACHINE).decode()
    cpu = text[text.index("<ovf:Item>"):text.index("</ovf:Item>")]
    tags = [part.split(">")[0] for part in cpu.split("<rasd:")[1:]]
    assert tags == sorted(tags) == ["Caption", "Description", "ElementName", "InstanceID",
                                    "ResourceType", "VirtualQuantity"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace(b'ovf:href="web-disk1.vmdk"', b'ovf:href="../../etc/shadow"'),
     "must be a plain name inside the OVA"),
    (lambda t: t.replace(b"<rasd:VirtualQuantity>2<", b"<rasd:VirtualQuantity>999<"),
     "CPUs 999 is outside 1..64"),
    (lambda t: t.replace(b"<rasd:VirtualQuantity>768<", b"<rasd:VirtualQuantity>lots<"),
     "memory 'lots' is not a whole number"),
    (lambda t: t.replace(b'ovf:fileRef="file1"', b'ovf:fileRef="nope"'),
     "fileRef names no file"),
    (lambda t: b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">'
               b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><x>&b;</x>',
     "not XML"),
    (lambda t: b"<Envelope/>", "not an OVF 1.x envelope"),
    (lambda t: b"x" * (2 << 20), "over 1 MiB"),
])
def test_hostile_descriptors_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        read_descriptor(change(descriptor(MACHINE)), "bad.ovf")
