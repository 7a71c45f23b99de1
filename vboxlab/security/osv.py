"""Advisories from OSV records (a folder or zip the user points at), checked against the schema.

Records are untrusted input: every one is validated against the OSV JSON
schema before use, zip members are read in memory (never extracted) and size
limited. Only ``Debian:<release>`` packages are used; they name source packages.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from debian.debian_support import NativeVersion

from vboxlab.errors import ConfigError
from vboxlab.security.inventory import InstalledPackage, Inventory
from vboxlab.security.results import Severity
from vboxlab.security.vulns import Finding

MAX_RECORD_BYTES = 16 * 1024 * 1024
MAX_RECORDS = 500_000
SCHEMA_ENV = "VBOXLAB_OSV_SCHEMA"


def schema_path() -> Path:
    """Where the OSV JSON schema is: $VBOXLAB_OSV_SCHEMA, else what `make` put in the venv."""
    candidates = [Path(os.environ[SCHEMA_ENV])] if os.environ.get(SCHEMA_ENV) else []
    candidates.append(Path(sys.prefix) / "share" / "vboxlab" / "osv-schema.json")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "the OSV JSON schema is not installed, so OSV records cannot be checked: run `make "
        "venv` (it takes validation/schema.json from the osv wheel on PyPI) or point "
        f"{SCHEMA_ENV} at a copy of the schema (github.com/ossf/osv-schema)")


@dataclass(frozen=True)
class Range:
    introduced: str
    fixed: str | None
    last_affected: str | None


@dataclass(frozen=True)
class OsvAdvisory:
    """One OSV record's statement about one Debian source package."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    source_package: str
    ranges: tuple[Range, ...]
    versions: tuple[str, ...]
    severity: Severity
    origin: str  # file (and zip member) it came from

    def affects(self, version: str) -> bool:
        """True if the source version lies in an affected range or list."""
        if version in self.versions:
            return True
        v = NativeVersion(version)
        for r in self.ranges:
            if r.introduced != "0" and v < NativeVersion(r.introduced):
                continue
            if r.fixed is not None and not v < NativeVersion(r.fixed):
                continue
            if r.last_affected is not None and v > NativeVersion(r.last_affected):
                continue
            return True
        return False

    def fixed_in(self) -> str:
        return ", ".join(r.fixed for r in self.ranges if r.fixed) or "no fix yet"


class OsvDatabase:
    """OSV records for one Debian release, indexed by source package."""

    def __init__(self, location: Path, *, release: str = "12") -> None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        if not location.exists():
            raise ConfigError(f"OSV advisories {location}: no such file or folder; give a folder "
                              "of OSV .json records or a zip of them (--lab-advisories)")
        self.location = location
        self.ecosystem = f"Debian:{release}"
        validator = Draft202012Validator(json.loads(schema_path().read_text()))
        self.by_source: dict[str, list[OsvAdvisory]] = {}
        self.records = 0
        for origin, raw in _records(location):
            try:
                data = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ConfigError(f"OSV record {origin} is not JSON: {exc}") from None
            error = best_match(validator.iter_errors(data))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
                raise ConfigError(f"OSV record {origin} breaks the OSV schema at {where}: "
                                  f"{error.message}; fix or remove the record")
            self.records += 1
            for advisory in self._advisories(data, origin):
                self.by_source.setdefault(advisory.source_package, []).append(advisory)
        self.description = f"OSV records in {location} ({self.records}, {self.ecosystem})"

    def __repr__(self) -> str:
        return f"<OsvDatabase {self.location}: {self.records} records, {self.ecosystem}>"

    def findings(self, inventory: Inventory, *, cve_ids: bool) -> list[Finding]:
        """A finding per installed package and OSV record that affects its source version."""
        return [Finding((advisory.id, *advisory.aliases), package.name, package.source,
                        package.version, advisory.fixed_in(), "osv", advisory.severity,
                        note=advisory.summary)
                for package in inventory.packages for advisory in self.matches(package)]

    def _advisories(self, data: dict[str, Any], origin: str) -> Iterator[OsvAdvisory]:
        for affected in data.get("affected", []):
            package = affected.get("package", {})
            if package.get("ecosystem") != self.ecosystem or not package.get("name"):
                continue
            ranges: list[Range] = []
            for r in affected.get("ranges", []):
                if r.get("type") != "ECOSYSTEM":
                    continue
                ranges.extend(_intervals(r.get("events", [])))
            yield OsvAdvisory(
                id=data["id"], aliases=tuple(data.get("aliases", [])),
                summary=data.get("summary", "") or data.get("details", "")[:120],
                source_package=package["name"], ranges=tuple(ranges),
                versions=tuple(affected.get("versions", [])),
                severity=severity_of(data, affected), origin=origin)

    def matches(self, package: InstalledPackage) -> list[OsvAdvisory]:
        """The advisories that affect ``package``'s source version."""
        return [a for a in self.by_source.get(package.source, [])
                if a.affects(package.source_version)]


def _intervals(events: list[dict[str, str]]) -> Iterator[Range]:
    """OSV events (in order) -> [introduced, fixed) or [introduced, last_affected] ranges."""
    introduced: str | None = None
    for event in events:
        if "introduced" in event:
            introduced = event["introduced"]
        elif introduced is not None and ("fixed" in event or "last_affected" in event):
            yield Range(introduced, event.get("fixed"), event.get("last_affected"))
            introduced = None
    if introduced is not None:
        yield Range(introduced, None, None)


def severity_of(data: dict[str, Any], affected: dict[str, Any]) -> Severity:
    """The record's severity: CVSS vectors scored with `cvss`, else a named level."""
    from cvss import CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    best = Severity.UNKNOWN
    for entry in [*data.get("severity", []), *affected.get("severity", [])]:
        kind, vector = entry.get("type", ""), entry.get("score", "")
        try:
            if kind == "CVSS_V3":
                name = CVSS3(vector).severities()[0]
            elif kind == "CVSS_V4":
                name = CVSS4(vector).severity
            else:
                continue
        except CVSSError:
            continue
        if name.upper() in Severity.__members__:
            best = max(best, Severity[name.upper()])
    if best is Severity.UNKNOWN:
        for holder in (affected.get("ecosystem_specific"), affected.get("database_specific"),
                       data.get("database_specific")):
            if isinstance(holder, dict):
                named = str(holder.get("severity") or holder.get("urgency") or "").upper()
                if named in Severity.__members__:
                    return Severity[named]
    return best


def _records(location: Path) -> Iterator[tuple[str, bytes]]:
    """(origin, bytes) of every .json record in a folder tree or a zip."""
    if location.is_dir():
        for count, path in enumerate(sorted(location.rglob("*.json"))):
            if count >= MAX_RECORDS:
                raise ConfigError(f"{location} holds over {MAX_RECORDS} records")
            if path.is_symlink() or not path.is_file():
                continue
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise ConfigError(f"OSV record {path} is over {MAX_RECORD_BYTES} bytes")
            yield str(path), path.read_bytes()
        return
    if not zipfile.is_zipfile(location):
        raise ConfigError(f"OSV advisories {location}: not a folder or a zip file")
    with zipfile.ZipFile(location) as archive:
        members = [m for m in archive.infolist() if m.filename.endswith(".json")
                   and not m.is_dir()]
        if len(members) > MAX_RECORDS:
            raise ConfigError(f"{location} holds over {MAX_RECORDS} records")
        for member in members:
            if member.file_size > MAX_RECORD_BYTES:
                raise ConfigError(f"OSV record {location}:{member.filename} is over "
                                  f"{MAX_RECORD_BYTES} bytes")
            with archive.open(member) as handle:
                data = handle.read(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES:
                raise ConfigError(f"OSV record {location}:{member.filename} unpacks to over "
                                  f"{MAX_RECORD_BYTES} bytes")
            yield f"{location}:{member.filename}", data
