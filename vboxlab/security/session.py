"""``Scan``: the scanners with one run's settings, remembering every result for the reports.

The ``scan`` fixture, the ``vboxlab scan`` command and anything else that scans
goes through this class, so they all behave the same.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

from vboxlab.errors import ConfigError
from vboxlab.security.allowlist import Allowlist
from vboxlab.security.compliance import ComplianceReport, load_profile
from vboxlab.security.guestfiles import DEFAULT_FILE_LIMIT
from vboxlab.security.lynis import LynisReport
from vboxlab.security.malware import ClamavEngine, MalwareReport, YaraEngine
from vboxlab.security.ports import PortReport, Versions
from vboxlab.security.results import ScanResult, Severity
from vboxlab.security.scanner import (
    ComplianceScanner,
    LynisScanner,
    MalwareScanner,
    PortScanner,
    Scanner,
)
from vboxlab.security.vulns import AdvisorySource, VulnerabilityScanner, VulnReport, load_sources

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine
    from vboxlab.net.network import Network


@dataclass
class ScanSettings:
    """Where a run's security data comes from (the plugin's --lab-* options)."""

    advisories: Path | None = None  # OSV folder or zip
    debsecan: Path | None = None  # a debsecan feed file
    suite: str | None = "bookworm-security"
    allowlist: Path | None = None
    rules: list[Path] = field(default_factory=list)  # YARA folders
    signatures: list[Path] = field(default_factory=list)  # ClamAV folders
    profiles: list[Path] = field(default_factory=list)  # compliance profile folders
    cache: Path | None = None


class Scan:
    """Security scans of a lab's machines, as assertions: ``scan.ports(...)``, ..."""

    def __init__(self, lab: Lab | None = None, settings: ScanSettings | None = None) -> None:
        self.lab = lab
        self.settings = settings or ScanSettings()
        self.results: list[ScanResult] = []
        #: check only this rule of a profile (a test per rule: --lab-compliance-as-tests)
        self.only_rule: str | None = None

    def __repr__(self) -> str:
        return f"<Scan: {len(self.results)} results>"

    def lynis(self, machine: Machine, *, groups: str | None = None, skip: Sequence[str] = (),
              timeout: float = 3600) -> LynisReport:
        """Lynis audited inside the guest (``groups`` like "ssh" runs a subset; a full audit
        of a Debian guest under TCG takes over 15 minutes)."""
        scanner = LynisScanner(groups=groups, skip=tuple(skip), timeout=timeout)
        return cast(LynisReport, self.run(scanner, machine))

    def run(self, scanner: Scanner, machine: Machine) -> ScanResult:
        """Run any scanner and remember its result."""
        result = scanner.scan(machine)
        self.results.append(result)
        return result

    def ports(self, target: Machine, *, from_node: Machine | str | None = None,
              ports: Iterable[int] | str | None = None, versions: Versions = False,
              scripts: Iterable[str] = ()) -> PortReport:
        """nmap ``target`` from ``from_node`` (a lab node or its name) or from the host."""
        if isinstance(from_node, str):
            if self.lab is None:
                raise ConfigError(f"from_node={from_node!r} names a node, but this scan has no "
                                  "lab; pass the machine itself")
            from_node = self.lab.node(from_node)
        scanner = PortScanner(self.lab, from_node=from_node, ports=ports, versions=versions,
                              scripts=scripts)
        return cast(PortReport, self.run(scanner, target))

    @functools.cached_property
    def _sources(self) -> list[AdvisorySource]:
        return load_sources(suite=self.settings.suite, osv=self.settings.advisories,
                            debsecan=self.settings.debsecan, cache=self.settings.cache)

    def vulnerabilities(self, machine: Machine, *, min_severity: str = "unknown",
                        keep_unknown: bool = True, allowlist: Path | None = None,
                        cve_ids: bool = True) -> VulnReport:
        """Packages of ``machine`` the advisories say are vulnerable (falsy when none)."""
        listed = allowlist or self.settings.allowlist
        scanner = VulnerabilityScanner(
            self._sources, allowlist=Allowlist.load(listed) if listed else None,
            min_severity=Severity.parse(min_severity, what="min_severity"),
            keep_unknown=keep_unknown, cve_ids=cve_ids)
        return cast(VulnReport, self.run(scanner, machine))

    @functools.cached_property
    def _yara(self) -> YaraEngine:
        return YaraEngine(self.settings.rules)

    @functools.cached_property
    def _clamav(self) -> ClamavEngine:
        return ClamavEngine(self.settings.signatures)

    def malware(self, machine: Machine, paths: Sequence[str] | str = ("/",), *,
                engines: Sequence[str] = ("yara", "clamav"),
                file_limit: int = DEFAULT_FILE_LIMIT) -> MalwareReport:
        """YARA and ClamAV over the files under ``paths`` (falsy when nothing matched)."""
        unknown = set(engines) - {"yara", "clamav"}
        if unknown:
            raise ConfigError(f"unknown malware engines {sorted(unknown)}: use yara, clamav")
        scanner = MalwareScanner([paths] if isinstance(paths, str) else paths,
                                 yara=self._yara if "yara" in engines else None,
                                 clamav=self._clamav if "clamav" in engines else None,
                                 file_limit=file_limit)
        return cast(MalwareReport, self.run(scanner, machine))

    def captures(self, source: Network | Path | Sequence[Path]) -> MalwareReport:
        """YARA over the payloads in pcaps: a running network's captures, a folder or files."""
        from vboxlab.security.captures import scan_captures

        if isinstance(source, Path):
            paths, target = [source], source.name
        elif isinstance(source, list | tuple):
            paths, target = list(source), "captures"
        else:
            network = cast("Network", source)
            network.fabric.flush()
            paths, target = sorted(p for p in network.captured if p.exists()), \
                network.topology.name
        report = scan_captures(paths, self._yara, target=target)
        self.results.append(report)
        return report

    def compliance(self, machine: Machine, profile: str | Path) -> ComplianceReport:
        """Each rule of a profile (``ssh-baseline``, a name or a .yaml path) on ``machine``."""
        loaded = load_profile(profile, self.settings.profiles)
        if self.only_rule is not None:
            loaded = loaded.only(self.only_rule)
        scanner = ComplianceScanner(loaded)
        return cast(ComplianceReport, self.run(scanner, machine))
