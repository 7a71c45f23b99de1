"""Accepted findings: a YAML list of advisory ids or packages, each with a reason and an expiry."""

from __future__ import annotations

import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vboxlab.errors import ConfigError, ScanFailed
from vboxlab.security.datafiles import load_yaml


class AllowEntry(BaseModel):
    """One accepted finding: ``id`` (an advisory or CVE id), ``package``, or both."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    package: str | None = None
    reason: str = Field(min_length=3)
    expires: datetime.date

    @model_validator(mode="after")
    def _names_something(self) -> AllowEntry:
        if not self.id and not self.package:
            raise ValueError("an entry needs id, package or both")
        return self

    def covers(self, ids: tuple[str, ...], package: str, source: str) -> bool:
        if self.id is not None and self.id not in ids:
            return False
        return self.package is None or self.package in (package, source)

    def describe(self) -> str:
        return " ".join(x for x in (self.id, self.package) if x)


class Allowlist:
    """The entries of an allowlist file; expired ones fail the scan that meets them."""

    def __init__(self, entries: list[AllowEntry], path: Path | None = None) -> None:
        self.entries = entries
        self.path = path

    @classmethod
    def load(cls, path: Path) -> Allowlist:
        raw = load_yaml(path, "allowlist")
        if raw is None:
            return cls([], path)
        if not isinstance(raw, list):
            raise ConfigError(f"allowlist {path}: expected a list of entries (- id: CVE-..., "
                              "reason: ..., expires: 2027-01-31)")
        entries = []
        for number, item in enumerate(raw, 1):
            try:
                entries.append(AllowEntry.model_validate(item))
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'entry'}: {e['msg']}"
                                     for e in exc.errors())
                raise ConfigError(f"allowlist {path}, entry {number}: {problems}") from None
        return cls(entries, path)

    def match(self, ids: tuple[str, ...], package: str, source: str, *,
              today: datetime.date | None = None) -> AllowEntry | None:
        """The entry that covers a finding; an expired one raises ScanFailed."""
        today = today or datetime.date.today()
        for entry in self.entries:
            if entry.covers(ids, package, source):
                if entry.expires < today:
                    raise ScanFailed(
                        f"allowlist {self.path}: the entry for {entry.describe()} expired on "
                        f"{entry.expires} (reason given: {entry.reason}); fix the finding or "
                        "renew the entry with a new date")
                return entry
        return None
