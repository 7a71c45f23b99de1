"""A direct wire between two VM NICs: a connected pair of UDP sockets on 127.0.0.1.

QEMU's ``-netdev dgram`` sends each Ethernet frame as one datagram over the
socket it is given; two sockets connected to each other make a cable with no
switch and no impairment (this host's fastest link between two guests, the
baseline the fabric is measured against). The lab owns the sockets, so they
stay bound while VMs restart, and no port is ever picked by guessing.
"""

from __future__ import annotations

import hashlib
import socket

from vboxlab.providers.base import NicSpec


def mac_for(*parts: str) -> str:
    """A stable, locally administered unicast MAC for a NIC."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    return "52:54:" + ":".join(f"{b:02x}" for b in digest[:4])


class DirectWire:
    """Two ends, each a socket handed to one VM's NIC."""

    def __init__(self, a: str, b: str, *, lab_id: str, interface: str = "eth1",
                 a_address: str | None = None, b_address: str | None = None) -> None:
        self.a, self.b = a, b
        self._sockets = {a: socket.socket(socket.AF_INET, socket.SOCK_DGRAM),
                         b: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)}
        for sock in self._sockets.values():
            sock.bind(("127.0.0.1", 0))
        self._sockets[a].connect(self._sockets[b].getsockname())
        self._sockets[b].connect(self._sockets[a].getsockname())
        self._nics = {
            a: NicSpec(interface, mac_for(lab_id, a, b, a), self._sockets[a].fileno(), a_address),
            b: NicSpec(interface, mac_for(lab_id, a, b, b), self._sockets[b].fileno(), b_address),
        }

    def nic(self, node: str) -> NicSpec:
        """The NIC to give ``node`` when creating it."""
        return self._nics[node]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
