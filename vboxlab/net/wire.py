"""Datagram wires: connected pairs of sockets that carry Ethernet frames, one per datagram.

QEMU's ``-netdev dgram`` sends each Ethernet frame as one datagram over the
socket it is given. A pair of sockets connected to each other is a cable: either
between two VMs (:class:`DirectWire`, no switch and no impairment: this host's
fastest link between two guests, the baseline the fabric is measured against),
or between a VM and the fabric (one end per side). On one host the pair is a
UNIX datagram socketpair: a frame costs the kernel one copy in and one out, no
IP stack (a UDP pair on loopback cost the fabric 40 % more CPU per frame). A
peer that can only be given an address (libvirt's QEMU, a fabric on another
host) gets a UDP pair on 127.0.0.1 instead (:func:`udp_socket_pair`). The lab
owns the sockets, so they stay open while VMs restart, and no port is ever
picked by guessing.
"""

from __future__ import annotations

import socket

from vboxlab.net.plan import mac_for
from vboxlab.providers.base import NicSpec

SOCKET_BUFFER = 4 << 20


#: SO_SNDBUFFORCE / SO_RCVBUFFORCE (Linux): buffers beyond net.core.*mem_max, for root
_FORCE = {socket.SO_SNDBUF: 32, socket.SO_RCVBUF: 33}


def size_buffers(sock: socket.socket) -> None:
    """Give ``sock`` SOCKET_BUFFER bytes each way: a burst of frames waits instead of being
    dropped. Without root the kernel caps it at net.core.wmem_max/rmem_max (about 200 KiB)."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _FORCE[option], SOCKET_BUFFER)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two UNIX datagram sockets connected to each other (the two ends of a cable)."""
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    size_buffers(one)
    size_buffers(two)
    return one, two


def udp_socket_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on 127.0.0.1 connected to each other, for a peer given an address."""
    one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    two = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for sock in (one, two):
        sock.bind(("127.0.0.1", 0))
        size_buffers(sock)
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
