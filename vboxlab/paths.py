"""Where vboxlab keeps things: the user cache for templates, the run state for labs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The per-user cache (``$VBOXLAB_CACHE`` or ``$XDG_CACHE_HOME/vboxlab``)."""
    if env := os.environ.get("VBOXLAB_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vboxlab"


def state_base() -> Path:
    """The folder holding one sub-folder per lab (``$VBOXLAB_STATE_DIR`` overrides).

    Kept short on purpose: QMP and other UNIX sockets live below it and their
    paths must stay under 108 bytes.
    """
    if env := os.environ.get("VBOXLAB_STATE_DIR"):
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir() and len(runtime) < 40:
        return Path(runtime) / "vboxlab"
    return Path(f"/tmp/vboxlab-{os.getuid()}")


def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None
