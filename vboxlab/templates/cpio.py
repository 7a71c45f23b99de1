"""A writer for the cpio "newc" format that the Linux kernel unpacks as an initramfs.

No maintained PyPI package writes newc archives; the format is a 110-byte ASCII
header per entry, so it is written here (see the kernel's
Documentation/driver-api/early-userspace/buffer-format.rst).
"""

from __future__ import annotations

import stat
from typing import BinaryIO

_MAGIC = b"070701"


class CpioWriter:
    """Append entries to a newc archive; call :meth:`close` to write the trailer."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0)) -> None:
        name = name.lstrip("/")
        if name in self._names:
            raise ValueError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = [self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0]
        header = _MAGIC + b"".join(b"%08X" % f for f in fields)
        self._ino += 1
        self._out.write(header + encoded)
        self._out.write(b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data)
        self._out.write(b"\0" * (-len(data) % 4))

    def add_dir(self, name: str, perm: int = 0o755) -> None:
        """Add a directory."""
        self._entry(name, stat.S_IFDIR | perm, b"", nlink=2)

    def add_file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        """Add a regular file with the given contents."""
        self._entry(name, stat.S_IFREG | perm, data)

    def add_symlink(self, name: str, target: str) -> None:
        """Add a symbolic link."""
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_chardev(self, name: str, major: int, minor: int, perm: int = 0o600) -> None:
        """Add a character device node."""
        self._entry(name, stat.S_IFCHR | perm, b"", rdev=(major, minor))

    def add_tree_dirs(self, path: str) -> None:
        """Add ``path`` and each of its parents that is not in the archive yet."""
        parts = path.strip("/").split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub and sub not in self._names:
                self.add_dir(sub)

    def close(self) -> None:
        """Write the trailer entry."""
        self._entry("TRAILER!!!", 0, b"")
