"""An Ansible inventory of a lab: ``vboxlab inventory LAB --format ini|yaml|json``.

Every running machine with SSH is a host; its variables are the connection facts
of :mod:`vboxlab.sshconfig` (address, port, user, the lab's key, a known_hosts
file with only its pinned host key and ``StrictHostKeyChecking=yes``). Groups:
one per template (``template_debian_12``) and, for a ``vboxlab up`` lab, one per
topology segment (``segment_lan``). The YAML and JSON forms are Ansible's YAML
inventory structure (JSON is read by the same plugin); INI values are quoted
with ``shlex`` as Ansible's INI parser splits them.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

from vboxlab.errors import ConfigError
from vboxlab.labdirs import LabRecord
from vboxlab.labstatus import TOPOLOGY_COPY
from vboxlab.sshconfig import ssh_config_of_record

#: where Debian puts python3; templates without it cannot run Ansible modules but ``raw``
PYTHON = "/usr/bin/python3"


@dataclass
class Inventory:
    """Hosts with their variables, and groups of hosts."""

    hosts: dict[str, dict[str, str | int]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)


def group_name(prefix: str, name: str) -> str:
    """An Ansible-safe group name (letters, digits, underscores)."""
    return f"{prefix}_{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


def lab_inventory(record: LabRecord) -> Inventory:
    """The inventory of ``record``'s running machines that have SSH."""
    found = Inventory()
    for name, info in sorted(record.machines.items()):
        if not info.get("running") or not isinstance(info.get("ssh"), dict):
            continue
        facts = ssh_config_of_record(record, name)
        template = str(info.get("template") or "")
        found.hosts[name] = {
            "ansible_host": facts.host, "ansible_port": facts.port,
            "ansible_user": facts.user,
            "ansible_ssh_private_key_file": str(facts.identity_file),
            "ansible_ssh_common_args": " ".join([
                "-o", f"UserKnownHostsFile={facts.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes"]),
            "ansible_python_interpreter": PYTHON,
            "vboxlab_lab": record.id, "vboxlab_template": template,
        }
        if template:
            found.groups.setdefault(group_name("template", template), []).append(name)
    if not found.hosts:
        raise ConfigError(f"lab {record.id} has no running machine with SSH to put in an "
                          "inventory")
    topology_file = record.dir / TOPOLOGY_COPY
    if topology_file.is_file():
        from vboxlab.net.topology import load_topology

        topology = load_topology(topology_file)
        for interface in topology.interfaces:
            if interface.node in found.hosts:
                members = found.groups.setdefault(group_name("segment", interface.segment), [])
                if interface.node not in members:
                    members.append(interface.node)
    return found


def _structure(inventory: Inventory) -> dict[str, Any]:
    return {"all": {
        "hosts": inventory.hosts,
        "children": {group: {"hosts": {host: None for host in hosts}}
                     for group, hosts in sorted(inventory.groups.items())}}}


def render_inventory(inventory: Inventory, fmt: str) -> str:
    """The inventory as ``ini``, ``yaml`` or ``json``."""
    if fmt == "json":
        return json.dumps(_structure(inventory), indent=2) + "\n"
    if fmt == "yaml":
        return str(yaml.safe_dump(_structure(inventory), sort_keys=False))
    if fmt != "ini":
        raise ConfigError(f"inventory format {fmt!r}: use ini, yaml or json")
    lines = []
    for host, variables in inventory.hosts.items():
        pairs = " ".join(f"{key}={shlex.quote(str(value))}" for key, value in variables.items())
        lines.append(f"{host} {pairs}")
    for group, hosts in sorted(inventory.groups.items()):
        lines += ["", f"[{group}]", *hosts]
    return "\n".join(lines) + "\n"
