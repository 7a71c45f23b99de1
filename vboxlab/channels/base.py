"""The channel protocol and the result of one command."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class CommandResult:
    """What one guest command did.

    >>> CommandResult("echo hi", 0, "hi\\n", "").succeeded
    True
    """

    command: str
    rc: int
    stdout: str
    stderr: str

    @property
    def succeeded(self) -> bool:
        return self.rc == 0

    @property
    def failed(self) -> bool:
        return self.rc != 0


@dataclass(frozen=True)
class GuestFile:
    """A guest file read for a scan: its bytes, or why it was skipped."""

    path: str
    data: bytes | None
    skipped: str = ""


class Channel(Protocol):
    """Runs commands in a guest and moves files in and out."""

    def connect(self, timeout: float) -> None: ...

    def run(self, command: str, timeout: float) -> CommandResult: ...

    def put(self, local: Path, remote: str) -> None: ...

    def get(self, remote: str, local: Path) -> None: ...

    def read_files(self, paths: Sequence[str], limit: int) -> Iterator[GuestFile]: ...

    def interrupt(self, reason: str) -> None:
        """Fail requests in flight with ``reason``: the guest is about to be rewound."""

    def close(self, reason: str = "") -> None:
        """Disconnect; ``reason`` is what requests still waiting are told."""
