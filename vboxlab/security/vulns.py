"""Vulnerability assessment: a machine's packages against the advisory sources, offline."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from vboxlab.security.allowlist import Allowlist
from vboxlab.security.inventory import InstalledPackage, Inventory, from_machine
from vboxlab.security.results import Case, Severity, text_table

if TYPE_CHECKING:
    from vboxlab.machine import Machine


@dataclass(frozen=True)
class Finding:
    """A package the advisories say is vulnerable."""

    ids: tuple[str, ...]  # advisory ids and aliases (CVE ids)
    package: str
    source: str
    installed: str
    fixed: str
    origin: str  # "debian-security" or "osv"
    severity: Severity = Severity.UNKNOWN
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"ids": list(self.ids), "package": self.package, "source": self.source,
                "installed": self.installed, "fixed": self.fixed, "origin": self.origin,
                "severity": str(self.severity), "note": self.note}


class AdvisorySource(Protocol):
    """Something that turns an inventory into findings."""

    description: str

    def findings(self, inventory: Inventory, *, cve_ids: bool) -> list[Finding]: ...


@dataclass
class VulnReport:
    """The findings of one vulnerability scan; falsy when there are none."""

    target: str
    inventory: Inventory
    findings: list[Finding]
    sources: list[str]
    min_severity: Severity
    filtered_out: int = 0
    allowed: list[tuple[Finding, str]] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "vulnerabilities"

    def __bool__(self) -> bool:
        return bool(self.findings)

    def __len__(self) -> int:
        return len(self.findings)

    def __iter__(self) -> Any:
        return iter(self.findings)

    @property
    def packages(self) -> set[str]:
        """Names of the vulnerable packages."""
        return {f.package for f in self.findings}

    def __repr__(self) -> str:
        return f"<VulnReport {self.summary()}>\n{self.table()}"

    def summary(self) -> str:
        return (f"{self.target}: {len(self.packages)} of {len(self.inventory)} packages "
                f"vulnerable ({len(self.findings)} findings at {self.min_severity} or above or "
                f"unknown; {self.filtered_out} below it, {len(self.allowed)} allowlisted) from "
                f"{self.inventory.origin}")

    def table(self) -> str:
        rows = [[f.package, f.installed, f.fixed, str(f.severity), f.origin,
                 _ids(f.ids)] for f in self.findings]
        return text_table(["package", "installed", "fixed", "severity", "source", "advisories"],
                          rows)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "summary": self.summary(),
                "inventory": {"origin": self.inventory.origin,
                              "packages": len(self.inventory)},
                "sources": self.sources, "min_severity": str(self.min_severity),
                "filtered_out": self.filtered_out, "seconds": round(self.seconds, 3),
                "findings": [f.to_json() for f in self.findings],
                "allowed": [{**f.to_json(), "reason": why} for f, why in self.allowed]}

    def cases(self) -> list[Case]:
        classname = f"vulnerabilities.{self.target}"
        cases = [Case(name=f"{f.package} {f.installed}", classname=classname,
                      failure=(f"{f.package} {f.installed} is vulnerable ({f.severity}): fixed "
                               f"in {f.fixed}; {', '.join(f.ids)}"
                               + (f"; {f.note}" if f.note else "")))
                 for f in self.findings]
        cases += [Case(name=f"{f.package} {f.installed}", classname=classname,
                       skipped=f"allowlisted: {why}") for f, why in self.allowed]
        return cases


def _ids(ids: tuple[str, ...], shown: int = 4) -> str:
    return ", ".join(ids[:shown]) + (f" (+{len(ids) - shown})" if len(ids) > shown else "")


class VulnerabilityScanner:
    """Finds vulnerable packages on a machine (the ``Scanner`` for ``vulnerabilities``)."""

    kind = "vulnerabilities"

    def __init__(self, sources: list[AdvisorySource], *, allowlist: Allowlist | None = None,
                 min_severity: Severity = Severity.UNKNOWN, keep_unknown: bool = True,
                 cve_ids: bool = True) -> None:
        self.sources = sources
        self.allowlist = allowlist
        self.min_severity = min_severity
        self.keep_unknown = keep_unknown
        self.cve_ids = cve_ids

    def scan(self, machine: Machine) -> VulnReport:
        started = time.monotonic()
        return self.assess(from_machine(machine), started)

    def assess(self, inventory: Inventory, started: float | None = None) -> VulnReport:
        """Match an inventory against every source; filter by severity and allowlist."""
        started = time.monotonic() if started is None else started
        report = VulnReport(inventory.machine, inventory, [], [s.description for s in
                                                                self.sources], self.min_severity)
        for source in self.sources:
            for finding in source.findings(inventory, cve_ids=self.cve_ids):
                if not self._severe_enough(finding.severity):
                    report.filtered_out += 1
                    continue
                entry = (self.allowlist.match(finding.ids, finding.package, finding.source)
                         if self.allowlist else None)
                if entry is not None:
                    report.allowed.append((finding, entry.reason))
                else:
                    report.findings.append(finding)
        report.findings.sort(key=lambda f: (-f.severity, f.package))
        report.seconds = time.monotonic() - started
        return report

    def _severe_enough(self, severity: Severity) -> bool:
        if severity is Severity.UNKNOWN:
            return self.keep_unknown
        return severity >= self.min_severity


def load_sources(*, suite: str | None = "bookworm-security", osv: Path | None = None,
                 debsecan: Path | None = None, cache: Path | None = None) -> list[AdvisorySource]:
    """The advisory sources: the security suite (unless ``suite`` is None), OSV records and a
    debsecan feed."""
    from vboxlab.security.debian_security import SecuritySuite
    from vboxlab.security.debsecan import DebsecanFeed
    from vboxlab.security.osv import OsvDatabase

    sources: list[AdvisorySource] = []
    if suite:
        sources.append(SecuritySuite(suite, cache=cache))
    if osv is not None:
        sources.append(OsvDatabase(osv))
    if debsecan is not None:
        sources.append(DebsecanFeed(debsecan))
    return sources


__all__ = ["Finding", "InstalledPackage", "VulnReport", "VulnerabilityScanner", "load_sources"]
