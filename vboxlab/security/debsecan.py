"""Advisories from a debsecan feed the user has (the Debian security tracker's compact format).

The file is what debsecan downloads from
``security-tracker.debian.org/tracker/debsecan/release/1/<suite or GENERIC>``:
zlib-compressed (or already inflated) text, ``VERSION 1``, then three sections
separated by blank lines: vulnerabilities (``name,flags,description``), package
entries (``package,index,flags,fixed-in-unstable,other-fixed-versions``; flags:
B binary package, urgency L/M/H, R remote, F fix available) and source-to-binary
lines. It is untrusted input: size-limited, every line checked.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

from debian.debian_support import NativeVersion

from vboxlab.errors import ConfigError
from vboxlab.security.inventory import InstalledPackage, Inventory
from vboxlab.security.results import Severity
from vboxlab.security.vulns import Finding

MAX_FEED_BYTES = 256 * 1024 * 1024
URGENCY = {" ": Severity.UNKNOWN, "L": Severity.LOW, "M": Severity.MEDIUM, "H": Severity.HIGH}


@dataclass(frozen=True)
class FeedEntry:
    """One vulnerability of one (binary or source) package in the feed."""

    name: str
    description: str
    package: str
    binary: bool
    severity: Severity
    remote: bool | None
    fixed: str  # version fixed in unstable ("" if none)
    other_fixed: tuple[str, ...]

    def affects(self, package: InstalledPackage) -> bool:
        """debsecan's rule: binary entries by name and version, source entries by source."""
        if self.binary and package.name == self.package:
            return not self.fixed or NativeVersion(package.version) < NativeVersion(self.fixed)
        if package.source != self.package:
            return False
        if package.source_version in self.other_fixed:
            return False
        return not self.fixed or NativeVersion(package.source_version) < NativeVersion(self.fixed)


def _text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"debsecan feed {path}: no such file (download it with debsecan's "
                          "URL, security-tracker.debian.org/tracker/debsecan/release/1/bookworm)")
    raw = path.read_bytes()
    if not raw.startswith(b"VERSION"):
        inflater = zlib.decompressobj()
        try:
            raw = inflater.decompress(raw, MAX_FEED_BYTES)
        except zlib.error as exc:
            raise ConfigError(f"debsecan feed {path}: neither text nor zlib data ({exc})") from None
        if inflater.unconsumed_tail:
            raise ConfigError(f"debsecan feed {path} inflates to over {MAX_FEED_BYTES} bytes")
    return raw.decode("utf-8", "replace")


class DebsecanFeed:
    """A debsecan feed, indexed by package name (binary or source)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = _text(path).split("\n")
        if not lines or lines[0] != "VERSION 1":
            raise ConfigError(f"debsecan feed {path}: line 1 is {lines[0][:40]!r}, not "
                              "'VERSION 1'; is it a debsecan feed?")
        number = 1
        names: list[tuple[str, str]] = []
        for number, line in enumerate(lines[1:], 2):
            if not line:
                break
            parts = line.split(",", 2)
            if len(parts) != 3:
                raise ConfigError(f"debsecan feed {path}, line {number}: want "
                                  f"name,flags,description, got {line[:80]!r}")
            names.append((parts[0], parts[2]))
        self.by_package: dict[str, list[FeedEntry]] = {}
        start = number  # the blank line's number is the next section's index
        for line_number, line in enumerate(lines[start:], start + 1):
            if not line:
                break
            self._add(line, names, line_number)
        self.vulnerabilities = len(names)
        self.description = f"debsecan feed {path} ({self.vulnerabilities} vulnerabilities)"

    def _add(self, line: str, names: list[tuple[str, str]], number: int) -> None:
        parts = line.split(",", 4)
        if len(parts) != 5 or not parts[1].isdigit() or len(parts[2]) != 4:
            raise ConfigError(f"debsecan feed {self.path}, line {number}: want package,index,"
                              f"flags,fixed,other-fixed, got {line[:80]!r}")
        package, index, flags, fixed, others = parts
        if int(index) >= len(names) or flags[1] not in URGENCY or flags[2] not in "?R ":
            raise ConfigError(f"debsecan feed {self.path}, line {number}: index {index} or "
                              f"flags {flags!r} out of range")
        name, description = names[int(index)]
        entry = FeedEntry(name, description, package, flags[0] == "B", URGENCY[flags[1]],
                          {"?": None, "R": True, " ": False}[flags[2]], fixed,
                          tuple(v for v in others.split(" ") if v))
        self.by_package.setdefault(package, []).append(entry)

    def __repr__(self) -> str:
        return f"<DebsecanFeed {self.path}: {self.vulnerabilities} vulnerabilities>"

    def findings(self, inventory: Inventory, *, cve_ids: bool) -> list[Finding]:
        found = []
        for package in inventory.packages:
            entries = {*self.by_package.get(package.name, []),
                       *self.by_package.get(package.source, [])}
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.affects(package):
                    remote = " (remotely exploitable)" if entry.remote else ""
                    found.append(Finding((entry.name,), package.name, package.source,
                                         package.version, entry.fixed or "no fix yet",
                                         "debsecan", entry.severity,
                                         note=entry.description + remote))
        return found
