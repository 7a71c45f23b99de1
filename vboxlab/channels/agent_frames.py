"""The agent channel's wire format: frames with sequence numbers and a CRC.

A frame is a 20-byte little-endian header (magic ``VBXA``, type, flags, a
reserved half-word, sequence number, payload length, CRC-32 over the header with
the CRC field zero and the payload) and the payload. ``vboxlab/agent/agent.c``
is the other end. A reader drops any frame whose magic, length or CRC is wrong
and scans on for the next magic: a restore that rewinds the guest halfway
through a frame costs that frame, never the stream.
"""

from __future__ import annotations

import enum
import struct
import zlib
from typing import NamedTuple

MAGIC = 0x41584256  # "VBXA" read as a little-endian u32
MAGIC_BYTES = struct.pack("<I", MAGIC)
HEADER = struct.Struct("<IBBHIII")
MAX_PAYLOAD = 1 << 20
#: the most file data one frame carries (the agent reads in chunks of this size too)
CHUNK = 256 * 1024


class Kind(enum.IntEnum):
    """Frame types: requests go to the guest, answers come back with the request's number."""

    HELLO = 1
    EXEC = 2
    KILL = 3
    WRITE = 16
    MKDIR = 17
    LIST = 19
    READ = 20
    READY = 64
    HELLO_ACK = 65
    STDOUT = 66
    STDERR = 67
    EXIT = 68
    OK = 80
    ERROR = 81
    STAT_REPLY = 82
    NAMES = 83
    DATA = 84


#: flags: WRITE's first and last chunk; READ without following a final symlink
FIRST, LAST, NOFOLLOW = 1, 2, 1


class Frame(NamedTuple):
    kind: int
    flags: int
    seq: int
    payload: bytes


def encode(kind: Kind, seq: int, payload: bytes = b"", flags: int = 0) -> bytes:
    """One frame, ready to send.

    >>> decode_all(encode(Kind.HELLO, 7, b"abc"))[0]
    Frame(kind=1, flags=0, seq=7, payload=b'abc')
    """
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"frame payload of {len(payload)} bytes, over {MAX_PAYLOAD}")
    header = HEADER.pack(MAGIC, kind, flags, 0, seq, len(payload), 0)
    crc = zlib.crc32(payload, zlib.crc32(header))
    return HEADER.pack(MAGIC, kind, flags, 0, seq, len(payload), crc) + payload


def path_payload(path: str, prefix: bytes = b"") -> bytes:
    """``prefix``, the path's length (u16) and the path: how requests name a guest file."""
    raw = path.encode()
    if not raw or len(raw) >= 4096 or b"\0" in raw:
        raise ValueError(f"guest path {path!r} must be 1..4095 bytes without NUL")
    return prefix + struct.pack("<H", len(raw)) + raw


class FrameReader:
    """Turns a byte stream into frames; counts what it had to drop."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.dropped_bytes = 0

    def feed(self, data: bytes) -> list[Frame]:
        self._buffer += data
        frames: list[Frame] = []
        buf = self._buffer
        at = 0
        while len(buf) - at >= HEADER.size:
            if buf[at:at + 4] != MAGIC_BYTES:
                found = buf.find(MAGIC_BYTES, at + 1)
                skip_to = found if found >= 0 else max(at + 1, len(buf) - 3)
                self.dropped_bytes += skip_to - at
                at = skip_to
                continue
            _, kind, flags, reserved, seq, length, crc = HEADER.unpack_from(buf, at)
            if length > MAX_PAYLOAD:
                self.dropped_bytes += 1
                at += 1
                continue
            end = at + HEADER.size + length
            if len(buf) < end:
                break
            header = HEADER.pack(MAGIC, kind, flags, reserved, seq, length, 0)
            payload = bytes(buf[at + HEADER.size:end])
            if zlib.crc32(payload, zlib.crc32(header)) != crc:
                self.dropped_bytes += 1
                at += 1
                continue
            frames.append(Frame(kind, flags, seq, payload))
            at = end
        del buf[:at]
        return frames


def decode_all(data: bytes) -> list[Frame]:
    """Every whole frame in ``data`` (for tests and tools)."""
    return FrameReader().feed(data)
