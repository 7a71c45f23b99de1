"""apt's package lists on the host: which suites it has, read fast, field by field."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vboxlab.errors import ScanError
from vboxlab.hosttools import require

LISTS = Path("/var/lib/apt/lists")
APT_HELPER = "/usr/lib/apt/apt-helper"
_FIELD = re.compile(r"^(Package|Version|Source|Filename|Size): (.*)$", re.MULTILINE)


@dataclass(frozen=True)
class ListedPackage:
    """One stanza of a Packages list."""

    name: str
    version: str
    source: str
    source_version: str
    filename: str
    size: int


def package_lists(suite: str, *, lists: Path = LISTS) -> list[Path]:
    """The Packages lists apt holds for ``suite`` (``bookworm-security``), any compression."""
    return sorted(p for p in lists.glob(f"*_dists_{suite}_*binary-*_Packages*")
                  if not p.name.endswith(".diff_Index"))


def read_list(path: Path) -> str:
    """A Packages list's text, uncompressed by apt's own helper (lz4, xz, gz, none)."""
    helper = APT_HELPER if Path(APT_HELPER).exists() else require("apt-helper", "to read apt lists")
    proc = subprocess.run([helper, "cat-file", str(path)], capture_output=True, text=True,
                          check=False, timeout=120)
    if proc.returncode != 0:
        raise ScanError(f"could not read apt list {path}: {proc.stderr.strip()}")
    return proc.stdout


def stanzas(text: str) -> Iterator[ListedPackage]:
    """The packages of a list (only the fields vulnerability matching needs)."""
    from vboxlab.security.inventory import source_of

    for block in text.split("\n\n"):
        fields = dict(_FIELD.findall(block))
        if "Package" not in fields or "Version" not in fields:
            continue
        source, source_version = source_of(fields["Package"], fields["Version"],
                                           fields.get("Source", ""))
        yield ListedPackage(fields["Package"], fields["Version"], source, source_version,
                            fields.get("Filename", ""), int(fields.get("Size", "0") or 0))
