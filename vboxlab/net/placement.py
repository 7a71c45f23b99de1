"""Spreading a topology's nodes over hypervisor hosts by memory (``--lab-hosts``).

Nodes a topology places itself (``host:``) stay where they are; namespace hosts
stay on this machine. Every other node goes, largest memory first, to the host
that has the largest share of its free memory left after what it has been given
so far, so a lab spreads in proportion to each host's memory (two equal hosts
take turns), and a node that fits nowhere is refused before anything boots,
with each host's free memory in the error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vboxlab.errors import ConfigError
from vboxlab.names import is_valid_name
from vboxlab.net.topology import Topology
from vboxlab.providers.remote_host import RemoteTarget, is_remote

#: memory (MiB) left on every host for everything that is not a lab machine
RESERVE_MB = 512


def parse_hosts(entries: list[str]) -> dict[str, str]:
    """``NAME=URI`` entries (``--lab-hosts``, one per option or ini line) checked: names are
    vboxlab names, URIs ``local`` or ``qemu+ssh://``."""
    hosts: dict[str, str] = {}
    for entry in entries:
        name, sep, uri = entry.strip().partition("=")
        if not sep or not is_valid_name(name):
            raise ConfigError(f"--lab-hosts {entry!r}: write NAME=local or "
                              "NAME=qemu+ssh://USER@HOST[:PORT]/system")
        if name in hosts:
            raise ConfigError(f"--lab-hosts: host {name!r} is given twice")
        if uri != "local":
            if not is_remote(uri):
                raise ConfigError(f"--lab-hosts {name}: {uri!r} is neither 'local' nor a "
                                  "qemu+ssh:// URI")
            RemoteTarget.parse(uri)
        hosts[name] = uri
    return hosts


def place(nodes: Mapping[str, int], free_mb: Mapping[str, int]) -> dict[str, str]:
    """Node -> host for nodes of the given memory (MiB), over hosts with the given free
    memory (MiB, before the reserve); hosts keep their order to break ties."""
    usable = {host: max(0, free - RESERVE_MB) for host, free in free_mb.items()}
    left = dict(usable)
    if not left:
        raise ConfigError("no hosts to place nodes on")
    chosen: dict[str, str] = {}
    for name, memory in sorted(nodes.items(), key=lambda item: (-item[1], item[0])):
        fitting = [h for h in left if left[h] >= memory]
        # the host with the largest share of its memory left: an even spread in proportion
        # to what each host has (max() keeps the first of equals)
        host = max(fitting, key=lambda h: left[h] / usable[h]) if fitting else ""
        if not host:
            state = ", ".join(f"{h} {free_mb[h]} MiB free" for h in free_mb)
            raise ConfigError(f"node {name} needs {memory} MiB and no host has that much left "
                              f"(keeping {RESERVE_MB} MiB each: {state}); add a host or give "
                              "nodes less memory")
        chosen[name] = host
        left[host] -= memory
    return chosen


def unplaced(topology: Topology) -> dict[str, int]:
    """The nodes placement decides (no ``host:``, not namespace hosts) and their memory."""
    return {name: node.memory for name, node in topology.nodes.items()
            if node.host is None and node.provider != "netns"}


def local_free_mb() -> int:
    """This machine's available memory (``MemAvailable``), MiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    raise ConfigError("cannot read MemAvailable from /proc/meminfo")
