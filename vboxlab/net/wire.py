"""Datagram wires: connected pairs of UDP sockets on 127.0.0.1 that carry Ethernet frames.

QEMU's ``-netdev dgram`` sends each Ethernet frame as one datagram over the
socket it is given. A pair of sockets connected to each other is a cable: either
between two VMs (:class:`DirectWire`, no switch and no impairment: this host's
fastest link between two guests, the baseline the fabric is measured against),
or between a VM and the fabric (one end per side). The lab owns the sockets, so
they stay bound while VMs restart, and no port is ever picked by guessing.
"""

from __future__ import annotations

import socket

from vboxlab.net.plan import mac_for
from vboxlab.providers.base import NicSpec

SOCKET_BUFFER = 4 << 20


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on 127.0.0.1 connected to each other (the two ends of a cable)."""
    one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    two = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (one, two):
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
    one.connect(two.getsockname())
    two.connect(one.getsockname())
    return one, two


class DirectWire:
    """Two ends, each a socket handed to one VM's NIC."""

    def __init__(self, a: str, b: str, *, lab_id: str, interface: str = "eth1",
                 a_address: str | None = None, b_address: str | None = None) -> None:
        self.a, self.b = a, b
        one, two = socket_pair()
        self._sockets = {a: one, b: two}
        self._nics = {
            a: NicSpec(interface, mac_for(lab_id, a, b, a), a_address, fd=one.fileno()),
            b: NicSpec(interface, mac_for(lab_id, a, b, b), b_address, fd=two.fileno()),
        }

    def __repr__(self) -> str:
        return f"<DirectWire {self.a}<->{self.b}>"

    def nic(self, node: str) -> NicSpec:
        """The NIC to give ``node`` when creating it."""
        return self._nics[node]

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
