"""The fabric's vhost-user ports, driven by a front end written here (what QEMU does).

The front end owns the "guest memory" (a memfd), lays out two split virtqueues in
it, speaks the vhost-user protocol over the port's socket and plays the guest:
it puts frames in the transmit ring, receive buffers in the receive ring, and
reads what the fabric wrote. So the back end's protocol handling, its ring
walking and its checks of guest-controlled values are tested without a VM.
"""

import contextlib
import os
import select
import socket
import struct
import time

import pytest

from vboxlab.net.fabric import Fabric, FabricError
from vboxlab.net.wire import socket_pair

from .test_fabric import BROADCAST, Nic, frame, mac

GET_FEATURES, SET_FEATURES, SET_OWNER, SET_MEM_TABLE, SET_LOG_BASE = 1, 2, 3, 5, 6
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 12, 13, 15, 16
SET_VRING_ENABLE = 18
VERSION_1, PROTOCOL_FEATURES, LOG_ALL, LOG_SHMFD = 1 << 32, 1 << 30, 1 << 26, 1 << 1
DESC_NEXT, DESC_WRITE = 1, 2
RX, TX = 0, 1
RING = 64
MEMORY = 1 << 20
UVA = 0x7F00_0000_0000  # where "QEMU" has the memory mapped: the fabric translates from it
BUFFERS = 0x40000       # 2 KiB buffers from here: RING for TX, then RING for RX
HEADER = 12             # virtio-net header with VERSION_1


class FrontEnd:
    """QEMU and the guest of one vhost-user NIC."""

    def __init__(self, path, mac_number, *, features=VERSION_1 | PROTOCOL_FEATURES):
        self.mac = mac(mac_number)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.mem_fd = os.memfd_create("guest")
        os.ftruncate(self.mem_fd, MEMORY)
        self.mem = memoryview(__import__("mmap").mmap(self.mem_fd, MEMORY))
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK) for _ in (RX, TX)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK) for _ in (RX, TX)]
        self.avail_idx = [0, 0]
        self.used_seen = [0, 0]
        self.features = features

    # -- the protocol ---------------------------------------------------------
    def send(self, request, payload=b"", fds=(), flags=1):
        message = struct.pack("<III", request, flags, len(payload)) + payload
        socket.send_fds(self.sock, [message], list(fds))

    def reply(self):
        header = self._read(12)
        request, flags, size = struct.unpack("<III", header)
        assert flags & 0x4, f"not a reply: flags {flags:#x}"
        return request, self._read(size)

    def _read(self, size):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the fabric closed the connection")
            data += chunk
        return data

    def handshake(self, log_fd=None):
        self.send(GET_FEATURES)
        _, offered = self.reply()
        assert struct.unpack("<Q", offered)[0] & self.features == self.features
        self.send(SET_FEATURES, struct.pack("<Q", self.features))
        self.send(GET_PROTOCOL_FEATURES)
        _, protocol = self.reply()
        assert struct.unpack("<Q", protocol)[0] & LOG_SHMFD
        self.send(SET_PROTOCOL_FEATURES, struct.pack("<Q", LOG_SHMFD))
        self.send(SET_OWNER)
        self.send(SET_MEM_TABLE, struct.pack("<II", 1, 0) +
                  struct.pack("<QQQQ", 0, MEMORY, UVA, 0), [self.mem_fd])
        if log_fd is not None:
            self.send(SET_LOG_BASE, struct.pack("<QQ", MEMORY // 4096 // 8, 0), [log_fd])
            assert self.reply()[0] == SET_LOG_BASE
        for q in (RX, TX):
            self.send(SET_VRING_NUM, struct.pack("<II", q, RING))
            self.send(SET_VRING_BASE, struct.pack("<II", q, 0))
            desc, avail, used = self.ring(q)
            self.send(SET_VRING_ADDR, struct.pack("<IIQQQQ", q, 0, UVA + desc, UVA + used,
                                                  UVA + avail, 0))
            self.send(SET_VRING_KICK, struct.pack("<Q", q), [self.kick[q]])
            self.send(SET_VRING_CALL, struct.pack("<Q", q), [self.call[q]])
            self.send(SET_VRING_ENABLE, struct.pack("<II", q, 1))
        # one round trip: the fabric handles a connection's messages in order, so every one
        # above is in effect once this reply is here (a frame sent before might find no ring)
        self.send(GET_FEATURES)
        self.reply()

    @staticmethod
    def ring(q):
        """Guest-physical offsets of queue q's descriptor table, avail and used rings."""
        base = q * 0x10000
        return base, base + 0x1000, base + 0x2000

    # -- the guest ------------------------------------------------------------
    def put_desc(self, q, index, addr, length, flags=0, next_=0):
        struct.pack_into("<QIHH", self.mem, self.ring(q)[0] + 16 * index, addr, length, flags,
                         next_)

    def make_available(self, q, head):
        _, avail, _ = self.ring(q)
        struct.pack_into("<H", self.mem, avail + 4 + 2 * (self.avail_idx[q] % RING), head)
        self.avail_idx[q] = (self.avail_idx[q] + 1) & 0xFFFF
        struct.pack_into("<H", self.mem, avail + 2, self.avail_idx[q])
        os.eventfd_write(self.kick[q], 1)

    def transmit(self, dst, payload=b"x" * 100, slot=0):
        data = bytes(HEADER) + frame(dst, self.mac, payload)
        addr = BUFFERS + 2048 * slot
        self.mem[addr:addr + len(data)] = data
        self.put_desc(TX, slot, addr, len(data))
        self.make_available(TX, slot)

    def post_receive_buffers(self, count):
        for slot in range(count):
            addr = BUFFERS + 2048 * (RING + slot)
            self.put_desc(RX, slot, addr, 2048, DESC_WRITE)
            self.make_available(RX, slot)

    def used(self, q, count=1, timeout=2.0):
        """Entries the fabric put in queue q's used ring since last asked, (id, len) each:
        waits (for its signals) until there are ``count`` or ``timeout`` passed."""
        _, _, used = self.ring(q)
        got = []
        deadline = time.monotonic() + timeout
        while True:
            index = struct.unpack_from("<H", self.mem, used + 2)[0]
            while self.used_seen[q] != index:
                slot = self.used_seen[q] % RING
                got.append(struct.unpack_from("<II", self.mem, used + 4 + 8 * slot))
                self.used_seen[q] = (self.used_seen[q] + 1) & 0xFFFF
            left = deadline - time.monotonic()
            if len(got) >= count or left <= 0:
                return got
            select.select([self.call[q]], [], [], left)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self.call[q])

    def received(self, count=1, timeout=2.0):
        """Frames the fabric wrote into receive buffers (header checked and cut off): waits
        until there are ``count`` or ``timeout`` passed."""
        frames = []
        for head, length in self.used(RX, count, timeout):
            addr = BUFFERS + 2048 * (RING + head)
            header = bytes(self.mem[addr:addr + HEADER])
            assert header == bytes(10) + b"\x01\x00", header  # num_buffers 1, no offloads
            frames.append(bytes(self.mem[addr + HEADER:addr + length]))
        return frames

    def close(self):
        self.sock.close()
        for fd in (*self.kick, *self.call, self.mem_fd):
            os.close(fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


@contextlib.contextmanager
def guest_on(path, mac_number, *, log_fd=None, **options):
    """A front end connected to ``path`` that has set the NIC up (then closed)."""
    with FrontEnd(path, mac_number, **options) as guest:
        guest.handshake(log_fd=log_fd)
        yield guest


@pytest.fixture
def vfabric(tmp_path):
    """A fabric with socket port 0 and vhost-user port 1 on segment 0; the socket NIC."""
    near, far = socket_pair()
    fab = Fabric(tmp_path, tied=True)
    fab.start()
    fab.add_port(0, far.fileno(), 0)
    fab.add_vport(1, 0, tmp_path / "p1.sock")
    yield fab, Nic(near, 1), tmp_path / "p1.sock"
    fab.close()
    near.close()
    far.close()


def test_frames_cross_between_a_vhost_user_nic_and_a_socket_nic(vfabric):
    fab, nic, path = vfabric
    with guest_on(path, 2) as guest:
        guest.post_receive_buffers(8)
        guest.transmit(BROADCAST, b"from the guest")
        assert nic.recv_all() == [frame(BROADCAST, guest.mac, b"from the guest")]
        assert guest.used(TX) == [(0, 0)]  # its buffer given back
        for n in range(3):
            nic.send(guest.mac, f"to the guest {n}".encode())
        assert guest.received(3) == [frame(guest.mac, nic.mac, f"to the guest {n}".encode())
                                    for n in range(3)]
        counters = fab.stats()
        assert counters["p1.in"]["rx_packets"] == 1 and counters["p1.out"]["tx_packets"] == 3


def test_frames_wait_for_receive_buffers_then_arrive_in_order(vfabric):
    fab, nic, path = vfabric
    with guest_on(path, 2) as guest:
        guest.transmit(BROADCAST)  # the switch learns where the guest is
        nic.recv_all()
        for n in range(5):
            nic.send(guest.mac, bytes([n]) * 60)
        assert guest.received(timeout=0.3) == []  # no buffer yet: the fabric holds them
        guest.post_receive_buffers(8)
        assert [f[14 + 2] for f in guest.received(5)] == [0, 1, 2, 3, 4]
        assert fab.stats()["p1.out"]["drop_full"] == 0


def test_frames_the_fabric_writes_are_marked_in_the_dirty_log(vfabric):
    """With LOG_ALL (QEMU saving or migrating the VM), every page written is logged."""
    _, nic, path = vfabric
    log_fd = os.memfd_create("log")
    os.ftruncate(log_fd, MEMORY // 4096 // 8)
    logging = VERSION_1 | PROTOCOL_FEATURES | LOG_ALL
    with open(log_fd, "rb") as log_file, \
            guest_on(path, 2, features=logging, log_fd=log_fd) as guest:
        guest.post_receive_buffers(1)
        nic.send(guest.mac, b"logged")
        assert len(guest.received()) == 1
        log = os.pread(log_file.fileno(), MEMORY // 4096 // 8, 0)
        page = (BUFFERS + 2048 * RING) // 4096
        used_page = FrontEnd.ring(RX)[2] // 4096
        assert log[page // 8] & (1 << page % 8), "the receive buffer's page is not logged"
        assert log[used_page // 8] & (1 << used_page % 8) == 0  # the ring gave no log address


def test_a_guest_cannot_point_the_fabric_outside_its_memory(vfabric):
    fab, nic, path = vfabric
    with guest_on(path, 2) as guest:
        guest.put_desc(TX, 1, MEMORY - 8, 64)           # runs past the end of its memory
        guest.make_available(TX, 1)
        guest.put_desc(TX, 2, 1 << 40, 64)              # nowhere
        guest.make_available(TX, 2)
        guest.put_desc(TX, 3, BUFFERS, 64, DESC_NEXT, 3)  # a chain that loops
        guest.make_available(TX, 3)
        guest.put_desc(TX, 4, BUFFERS, 64, DESC_WRITE)   # a receive buffer in the send ring
        guest.make_available(TX, 4)
        guest.transmit(BROADCAST, b"good", slot=5)
        assert nic.recv_all() == [frame(BROADCAST, guest.mac, b"good")]
        assert sorted(guest.used(TX, 5)) == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 0)]
        assert fab.stats()["p1.in"]["drop_bad"] == 4
        # a receive buffer too small for a frame, and one the fabric may not write: dropped
        guest.put_desc(RX, 0, BUFFERS + 2048 * RING, 20, DESC_WRITE)
        guest.make_available(RX, 0)
        guest.put_desc(RX, 1, BUFFERS + 2048 * RING, 2048)  # no WRITE flag
        guest.make_available(RX, 1)
        nic.send(guest.mac, b"too big for 20 bytes")
        nic.send(guest.mac, b"into a read-only buffer")
        assert sorted(guest.used(RX, 2)) == [(0, 0), (1, 0)]
        assert fab.stats()["p1.out"]["drop_bad"] == 2
        # an avail index beyond the ring breaks the ring: ignored, the fabric goes on
        struct.pack_into("<H", guest.mem, FrontEnd.ring(TX)[1] + 2, guest.avail_idx[TX] + 500)
        os.eventfd_write(guest.kick[TX], 1)
        assert nic.recv_all() == []
        assert "p1.in" in fab.stats()


def test_a_broken_protocol_ends_only_that_connection_and_qemu_can_connect_again(vfabric):
    fab, nic, path = vfabric
    with FrontEnd(path, 2) as bad:
        bad.send(GET_FEATURES, flags=7)  # version 3: not a vhost-user message
        with pytest.raises(ConnectionError):
            bad.reply()
    with FrontEnd(path, 2) as shrunk:  # a memory table with fewer descriptors than regions
        shrunk.send(SET_MEM_TABLE, struct.pack("<II", 2, 0) + bytes(64), [shrunk.mem_fd])
        with pytest.raises(ConnectionError):
            shrunk.send(GET_FEATURES)
            shrunk.reply()
    with guest_on(path, 3) as guest:  # a restarted QEMU: a fresh start
        guest.transmit(BROADCAST, b"again")
        assert nic.recv_all() == [frame(BROADCAST, guest.mac, b"again")]
    assert fab.stats()["p1.in"]["rx_packets"] == 1


def test_a_vhost_user_port_needs_a_usable_socket_path(vfabric, tmp_path):
    fab, _, _ = vfabric
    with pytest.raises(FabricError, match="must be absolute"):
        fab.add_vport(2, 0, "relative.sock")
    with pytest.raises(FabricError, match="under 108 bytes"):
        fab.add_vport(2, 0, tmp_path / ("x" * 120))
    (tmp_path / "file").write_text("keep me")
    with pytest.raises(FabricError, match="exists and is not a socket"):
        fab.add_vport(2, 0, tmp_path / "file")
    assert (tmp_path / "file").read_text() == "keep me"
    with pytest.raises(FabricError, match="bad port"):
        fab.add_vport(1, 0, tmp_path / "again.sock")  # port 1 is taken
