"""A VM's own files as a cloud-init NoCloud seed, for templates whose disk boots itself.

A kernel-booted template gets its host key, authorized key, names and lab
addresses in an extra initrd (see :func:`vboxlab.providers.vmfiles.vm_files`).
A disk that boots with its own bootloader (a cloud image) reads them the way
cloud images do: from a ``cidata`` volume holding ``user-data`` (cloud-config:
the host key pinned by vboxlab under ``ssh_keys``, the lab's key under
``ssh_authorized_keys``, the hostname and ``/etc/hosts`` lines), ``meta-data``
(instance id and hostname) and ``network-config`` (version 2: the user NIC by
DHCP, each lab NIC matched by its MAC with its address and the lab's routes).
The user-data is written with literal blocks so that minimal readers can parse
it line by line as well.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import yaml

from vboxlab.media.seed import build_seed
from vboxlab.providers.base import MachineSpec


def _block(text: str, indent: int) -> str:
    pad = " " * indent
    return "".join(f"{pad}{line}\n" for line in text.strip().splitlines())


def user_data(spec: MachineSpec, user: str) -> str:
    """The cloud-config of ``spec``'s machine (keys, names) for login as ``user``."""
    assert spec.host_key is not None
    private = spec.host_key.private_openssh.decode()
    hosts = f"127.0.0.1 localhost\n127.0.1.1 {spec.name}\n{spec.hosts}"
    text = ("#cloud-config\n"
            f"hostname: {spec.name}\n"
            "manage_etc_hosts: false\n"
            f"disable_root: {'false' if user == 'root' else 'true'}\n"
            "ssh_pwauth: false\n"
            "ssh_deletekeys: true\n"
            "ssh_authorized_keys:\n"
            f"  - {spec.authorized_key.strip()}\n"
            "ssh_keys:\n"
            "  ed25519_private: |\n"
            f"{_block(private, 4)}"
            f"  ed25519_public: {spec.host_key.public_line.strip()}\n"
            "write_files:\n"
            "  - path: /etc/hosts\n"
            "    permissions: '0644'\n"
            "    content: |\n"
            f"{_block(hosts, 6)}")
    if spec.forward:
        text += "bootcmd:\n  - [sysctl, -w, net.ipv4.ip_forward=1]\n"
    parsed = yaml.safe_load(text)  # what cloud-init will read: the same facts
    assert parsed["ssh_keys"]["ed25519_private"].strip() == private.strip()
    return text


def network_config(spec: MachineSpec) -> dict[str, Any]:
    """Version 2 network config: DHCP on the user NIC, lab NICs by MAC with their addresses."""
    ethernets: dict[str, Any] = {"eth0": {"match": {"name": "eth0"}, "dhcp4": True}}
    for nic in spec.nics:
        entry: dict[str, Any] = {"match": {"macaddress": nic.mac}, "set-name": nic.name}
        if nic.address:
            entry["addresses"] = [nic.address]
            subnet = ipaddress.ip_interface(nic.address).network
            routes = [{"to": str(ipaddress.ip_network(net, strict=False)), "via": via}
                      for net, via in spec.routes if ipaddress.ip_address(via) in subnet]
            if routes:
                entry["routes"] = routes
        ethernets[nic.name] = entry
    return {"version": 2, "ethernets": ethernets}


def write_seed(output: Path, spec: MachineSpec, *, user: str) -> None:
    """The machine's NoCloud seed image at ``output`` (it holds its private host key: 0600)."""
    build_seed(output, user_data=user_data(spec, user), network_config=network_config(spec),
               hostname=spec.name)
    output.chmod(0o600)
