"""Which guest files a scan reads: listed in the guest, read over the channel with limits."""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from vboxlab.channels.base import GuestFile
from vboxlab.errors import ConfigError, ScanError

if TYPE_CHECKING:
    from vboxlab.machine import Machine

DEFAULT_FILE_LIMIT = 32 * 1024 * 1024


def check_guest_paths(paths: Sequence[str]) -> list[str]:
    """Absolute, normalised guest paths; a clear error for anything else."""
    if isinstance(paths, str):
        paths = [paths]
    checked = []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ConfigError(f"guest path {path!r}: give absolute paths like /etc or /srv/www")
        checked.append(posixpath.normpath(path))
    if not checked:
        raise ConfigError("no guest paths to scan: give files or folders, like paths=['/srv']")
    return checked


def list_files(machine: Machine, paths: Sequence[str], *,
               timeout: float = 300) -> tuple[list[str], list[str]]:
    """(regular files under ``paths`` in the guest, one filesystem each like ``find -xdev``;
    find's complaints, such as a path that does not exist)."""
    command = f"find {' '.join(shlex.quote(p) for p in paths)} -xdev -type f -print0"
    result = machine.execute(command, timeout=timeout)
    if result.failed and not result.stdout:
        raise ScanError(f"{machine.name}: could not list {', '.join(paths)}: "
                        f"{result.stderr.strip()[-500:]}")
    problems = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    return [name for name in result.stdout.split("\0") if name], problems


def read_files(machine: Machine, paths: Sequence[str],
               limit: int = DEFAULT_FILE_LIMIT) -> Iterator[GuestFile]:
    """Each listed file's bytes, or why it was skipped (too big, unreadable, gone)."""
    return machine.channel.read_files(list(paths), limit)
