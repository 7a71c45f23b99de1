"""Inventories and ssh-config blocks as text: what Ansible and OpenSSH will parse."""

import json
import shlex

import yaml

from vboxlab.inventory import Inventory, group_name, render_inventory
from vboxlab.sshconfig import ssh_config_for


def test_ssh_config_pins_the_machines_key_for_its_port(tmp_path):
    machine = tmp_path / "lab1" / "web"
    machine.mkdir(parents=True)
    (machine / "known_hosts.pub").write_text("ssh-ed25519 AAAAC3Nza web@lab1\n")
    facts = ssh_config_for(machine, "web", "127.0.0.1", 40022, "root")
    assert facts.known_hosts.read_text() == "[127.0.0.1]:40022 ssh-ed25519 AAAAC3Nza\n"
    assert facts.known_hosts.stat().st_mode & 0o777 == 0o600
    block = facts.as_openssh().splitlines()
    assert block[0] == "Host web" and "  Port 40022" in block
    assert f"  IdentityFile {tmp_path / 'lab1' / 'id_ed25519'}" in block
    assert "  StrictHostKeyChecking yes" in block


def test_inventories_in_three_formats_say_the_same():
    inventory = Inventory(
        hosts={"web": {"ansible_host": "127.0.0.1", "ansible_port": 40022,
                       "ansible_ssh_common_args": "-o UserKnownHostsFile=/x y/k -o A=b"}},
        groups={group_name("template", "debian-12"): ["web"]})
    assert group_name("segment", "a--b") == "segment_a__b"
    as_yaml = yaml.safe_load(render_inventory(inventory, "yaml"))
    assert as_yaml == json.loads(render_inventory(inventory, "json"))
    assert as_yaml["all"]["hosts"]["web"]["ansible_port"] == 40022
    assert as_yaml["all"]["children"]["template_debian_12"]["hosts"] == {"web": None}
    ini = render_inventory(inventory, "ini").splitlines()
    host_line = shlex.split(ini[0])
    assert host_line[0] == "web"
    assert "ansible_ssh_common_args=-o UserKnownHostsFile=/x y/k -o A=b" in host_line
    assert ini[-2:] == ["[template_debian_12]", "web"]
