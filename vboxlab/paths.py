"""Where vboxlab keeps things: the user cache for templates, the run state for labs.

The state folder holds sockets, keys and the ledgers that cleanup acts on, so
it must be private: a real directory (not a symlink) owned by this user with
mode 0700. :func:`private_dir` creates it that way or refuses one that is not.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from vboxlab.errors import UnsafeStateDir


def cache_dir() -> Path:
    """The per-user cache (``$VBOXLAB_CACHE`` or ``$XDG_CACHE_HOME/vboxlab``)."""
    if env := os.environ.get("VBOXLAB_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vboxlab"


def config_dir() -> Path:
    """The per-user settings folder (``$XDG_CONFIG_HOME/vboxlab``): remotes, keys, trust."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vboxlab"


def state_base() -> Path:
    """The folder holding one sub-folder per lab (``$VBOXLAB_STATE_DIR`` overrides).

    Kept short on purpose: QMP and other UNIX sockets live below it and their
    paths must stay under 108 bytes. Not checked here: :func:`private_dir` does
    that before anything is written or removed there.
    """
    if env := os.environ.get("VBOXLAB_STATE_DIR"):
        return Path(env)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_dir() and len(runtime) < 40:
        return Path(runtime) / "vboxlab"
    return Path(f"/tmp/vboxlab-{os.getuid()}")


def check_private(path: Path) -> None:
    """Raise UnsafeStateDir unless ``path`` is a directory of this user with mode 0700."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        raise UnsafeStateDir(f"state folder {path} does not exist") from None
    fix = (f"remove it (rm -r {path}) or choose another with --lab-dir / VBOXLAB_STATE_DIR")
    if stat.S_ISLNK(info.st_mode):
        raise UnsafeStateDir(f"state folder {path} is a symlink (to {path.readlink()}); "
                             f"vboxlab keeps keys and sockets there and follows no links: {fix}")
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeStateDir(f"state folder {path} exists and is not a directory: {fix}")
    if info.st_uid != os.geteuid():
        raise UnsafeStateDir(f"state folder {path} belongs to uid {info.st_uid}, not to you "
                             f"(uid {os.geteuid()}); someone else may have made it to steer "
                             f"your labs' cleanup: {fix}")
    if info.st_mode & 0o077:
        raise UnsafeStateDir(f"state folder {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                             f"it must be private (0700): run chmod 700 {path}, or {fix}")


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) if missing and check it is private; returns it."""
    if not os.path.lexists(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # made meanwhile: checked below all the same
            path.mkdir(mode=0o700)
    check_private(path)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write ``path`` whole (beside, then renamed), mode 0600, its folder made 0700."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def is_inside(path: Path, folder: Path) -> bool:
    """True if ``path`` (resolved, symlinks followed) lies inside ``folder`` (resolved)."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(folder))
    except ValueError:
        return False
    return True


def repo_root() -> Path | None:
    """The source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None
