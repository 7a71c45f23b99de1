"""Reading the end of log files (consoles, lab logs) for error messages and reports."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (empty if there is none)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 65536))
            text = handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.replace("\r", "").splitlines()[-lines:])
