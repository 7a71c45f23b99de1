"""How plain OpenSSH tools reach a lab machine: address, port, user, key, pinned host key.

``vm.ssh_config()``, ``vboxlab ssh-config``, ``vboxlab ssh`` and ``vboxlab
inventory`` all build their facts here. The ``known_hosts`` file written beside
the machine holds exactly the machine's pinned host key for its forwarded
address, so ``StrictHostKeyChecking yes`` refuses anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vboxlab.errors import ConfigError, NotSupported

if TYPE_CHECKING:
    from vboxlab.labdirs import LabRecord

#: the lab's SSH key (its public half is authorised in every machine)
LAB_KEY = "id_ed25519"
PINNED_KEY = "known_hosts.pub"
KNOWN_HOSTS = "known_hosts"
_ALIAS_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class SshConfig:
    """The connection facts of one machine."""

    alias: str
    host: str
    port: int
    user: str
    identity_file: Path
    known_hosts: Path

    def as_openssh(self) -> str:
        """An OpenSSH ``Host`` block (``ssh -F``, ``scp -F``, ``rsync -e 'ssh -F ...'``)."""
        return "\n".join([
            f"Host {self.alias}",
            f"  HostName {self.host}",
            f"  Port {self.port}",
            f"  User {self.user}",
            f"  IdentityFile {self.identity_file}",
            f"  UserKnownHostsFile {self.known_hosts}",
            "  StrictHostKeyChecking yes",
            "  IdentitiesOnly yes",
            "  LogLevel ERROR",
            ""])

    def as_dict(self) -> dict[str, str | int]:
        return {"alias": self.alias, "host": self.host, "port": self.port, "user": self.user,
                "identity_file": str(self.identity_file),
                "known_hosts": str(self.known_hosts)}


def ssh_config_for(machine_dir: Path, alias: str, host: str, port: int,
                   user: str) -> SshConfig:
    """The facts of the machine whose folder is ``machine_dir`` (in its lab's folder), its
    ``known_hosts`` written for ``host:port``."""
    if not _ALIAS_RE.match(alias):
        raise ConfigError(f"{alias!r} cannot be an SSH host alias")
    try:
        pinned = (machine_dir / PINNED_KEY).read_text().split()[:2]
    except OSError as exc:
        raise ConfigError(f"{machine_dir}: the machine's pinned host key is missing "
                          f"({exc})") from None
    if len(pinned) != 2:
        raise ConfigError(f"{machine_dir / PINNED_KEY}: not a host key line")
    known_hosts = machine_dir / KNOWN_HOSTS
    address = host if port == 22 else f"[{host}]:{port}"
    known_hosts.write_text(f"{address} {' '.join(pinned)}\n")
    known_hosts.chmod(0o600)
    return SshConfig(alias, host, port, user, machine_dir.parent / LAB_KEY, known_hosts)


def ssh_config_of_record(record: LabRecord, vm_name: str) -> SshConfig:
    """The facts of a machine of a lab on disk (running, kept or up), from its machine.json."""
    info = record.machines.get(vm_name)
    if info is None:
        raise ConfigError(f"lab {record.id} has no machine {vm_name!r}; machines: "
                          f"{', '.join(sorted(record.machines)) or 'none'}")
    if not info.get("running"):
        raise ConfigError(f"{vm_name} of lab {record.id} is not running; start it first "
                          f"(vboxlab machine {record.id} {vm_name} start, for an up lab)")
    ssh = info.get("ssh")
    if info.get("provider", "qemu") not in ("qemu", "libvirt") or not isinstance(ssh, dict) \
            or not isinstance(ssh.get("port"), int):
        raise NotSupported(f"{vm_name} of lab {record.id} has no SSH (a "
                           f"{info.get('provider')} machine); run commands in it with "
                           "vboxlab exec")
    return ssh_config_for(record.dir / vm_name, vm_name, str(ssh.get("host", "127.0.0.1")),
                          int(ssh["port"]), str(ssh.get("user", "root")))
