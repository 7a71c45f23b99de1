"""Host tools vboxlab runs, and the Debian package that provides each."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from vboxlab.errors import HostError

QEMU_BINARY = "qemu-system-x86_64"

#: tool -> Debian package that provides it
DEBIAN_PACKAGES: dict[str, str] = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "apt-get": "apt",
    "apt-cache": "apt",
    "dpkg-deb": "dpkg",
    "mke2fs": "e2fsprogs",
    "setpriv": "util-linux",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ssh": "openssh-client",
    "tc": "iproute2",
    "ip": "iproute2",
    "suricata": "-t bookworm-backports suricata (Suricata 7; `make deps` adds the "
                "bookworm-backports source and installs it)",
    "mergecap": "wireshark-common",
    "tshark": "tshark",
}


def require(tool: str, purpose: str) -> str:
    """Return the path of ``tool`` or raise a HostError naming its Debian package."""
    path = shutil.which(tool)
    if path is None:
        package = DEBIAN_PACKAGES.get(tool, tool)
        raise HostError(
            f"{tool} not found on this host; it is needed {purpose}. "
            f"Install it with: apt-get install {package}"
        )
    return path


def run(argv: Sequence[str], *, what: str, timeout: float = 600,
        error: type[Exception] = HostError) -> str:
    """Run a host command, returning stdout; on failure raise ``error`` with its stderr."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise error(f"{what}: {argv[0]} did not finish within {timeout:g} s") from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise error(f"{what}: `{' '.join(argv)}` exited with status {proc.returncode}: {detail}")
    return proc.stdout


def compile_c(source: Path, name: str, what: str, flags: Sequence[str] = (),
              others: Sequence[Path] = ()) -> Path:
    """``source`` (with ``others``: more C files and the headers they include) compiled once
    per content into the user cache; returns the binary.

    Built under a scratch name and renamed, so parallel runs (and threads) never see half a
    binary.
    """
    from vboxlab.paths import cache_dir

    text = b"".join(path.read_bytes() for path in (source, *others))
    digest = hashlib.sha256(text + " ".join(flags).encode()).hexdigest()[:16]
    target = cache_dir() / name / digest / name
    if target.is_file():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise HostError(f"no C compiler found; {what} is compiled on first use. "
                        "Install one with: apt-get install gcc libc6-dev")
    target.parent.mkdir(parents=True, exist_ok=True)
    # per process and thread: machines created side by side may compile it at once
    scratch = target.with_name(f".build-{os.getpid()}-{threading.get_ident()}")
    units = [str(path) for path in (source, *others) if path.suffix == ".c"]
    run([compiler, "-O2", "-Wall", *flags, "-o", str(scratch), *units],
        what=f"compiling {what}", error=HostError)
    scratch.replace(target)
    return target
