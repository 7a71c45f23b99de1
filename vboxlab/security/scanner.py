"""The one small interface every scanner has, and the scanners built on it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol

from vboxlab.security.compliance import ComplianceReport, Profile, check_compliance
from vboxlab.security.guestfiles import DEFAULT_FILE_LIMIT
from vboxlab.security.lynis import LynisReport, run_lynis
from vboxlab.security.malware import ClamavEngine, MalwareReport, YaraEngine, scan_malware
from vboxlab.security.ports import PortReport, Versions, scan_ports
from vboxlab.security.results import ScanResult

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine


class Scanner(Protocol):
    """Scans one machine and returns a result that reports as JSON and JUnit."""

    kind: str

    def scan(self, machine: Machine) -> ScanResult: ...


class PortScanner:
    """nmap from a lab node (or the host) against a machine."""

    kind = "ports"

    def __init__(self, lab: Lab | None = None, *, from_node: Machine | None = None,
                 ports: Iterable[int] | str | None = None, versions: Versions = False,
                 scripts: Iterable[str] = ()) -> None:
        self.lab, self.from_node, self.ports = lab, from_node, ports
        self.versions, self.scripts = versions, list(scripts)

    def scan(self, machine: Machine) -> PortReport:
        return scan_ports(machine, lab=self.lab, from_node=self.from_node, ports=self.ports,
                          versions=self.versions, scripts=self.scripts)


class MalwareScanner:
    """YARA and/or ClamAV over the machine's files under ``paths``."""

    kind = "malware"

    def __init__(self, paths: Sequence[str] = ("/",), *, yara: YaraEngine | None = None,
                 clamav: ClamavEngine | None = None,
                 file_limit: int = DEFAULT_FILE_LIMIT) -> None:
        self.paths, self.yara, self.clamav, self.file_limit = list(paths), yara, clamav, file_limit

    def scan(self, machine: Machine) -> MalwareReport:
        return scan_malware(machine, self.paths, yara=self.yara, clamav=self.clamav,
                            file_limit=self.file_limit)


class ComplianceScanner:
    """A compliance profile's rules against the machine."""

    kind = "compliance"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile

    def scan(self, machine: Machine) -> ComplianceReport:
        return check_compliance(machine, self.profile)


class LynisScanner:
    """Lynis run inside the machine (a second compliance engine)."""

    kind = "lynis"

    def __init__(self, *, groups: str | None = None, skip: tuple[str, ...] = (),
                 timeout: float = 3600) -> None:
        self.groups, self.skip, self.timeout = groups, skip, timeout

    def scan(self, machine: Machine) -> LynisReport:
        return run_lynis(machine, groups=self.groups, skip=self.skip, timeout=self.timeout)
