"""Ports and services: nmap run from inside the lab (or the host), its XML read into types."""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from vboxlab.errors import ConfigError, ScanError, ScanFailed
from vboxlab.hosttools import require
from vboxlab.security.results import Case, text_table

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine

NMAP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Port:
    """One port nmap reported."""

    number: int
    protocol: str
    state: str
    service: str = ""
    product: str = ""
    version: str = ""
    extrainfo: str = ""
    scripts: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``22/tcp ssh (OpenSSH 9.2p1)``."""
        detail = " ".join(p for p in (self.product, self.version, self.extrainfo) if p)
        return (f"{self.number}/{self.protocol} {self.service or 'unknown'}"
                + (f" ({detail})" if detail else ""))


@dataclass
class PortReport:
    """What a port scan found on one target."""

    target: str
    address: str
    scanned_from: str
    command: list[str]
    ports: list[Port]
    seconds: float
    kind: str = "ports"

    @property
    def open_ports(self) -> set[int]:
        """Numbers of the open TCP ports."""
        return {p.number for p in self.ports if p.state == "open" and p.protocol == "tcp"}

    def service(self, number: int, protocol: str = "tcp") -> Port:
        """The port ``number``; KeyError naming the open ports if it was not found open."""
        for port in self.ports:
            if port.number == number and port.protocol == protocol:
                return port
        raise KeyError(f"{self.target}: port {number}/{protocol} was not reported; open: "
                       f"{self._names(self.open_ports)}")

    def _names(self, numbers: Iterable[int]) -> str:
        by_number = {p.number: p for p in self.ports if p.protocol == "tcp"}
        named = [by_number[n].describe() if n in by_number else f"{n}/tcp" for n in sorted(numbers)]
        return ", ".join(named) or "none"

    def difference(self, expected: Iterable[int]) -> tuple[set[int], set[int]]:
        """(open but not expected, expected but not open)."""
        wanted = set(expected)
        return self.open_ports - wanted, wanted - self.open_ports

    def assert_open(self, expected: Iterable[int]) -> None:
        """Fail naming the unexpected and the missing ports unless exactly ``expected`` are open."""
        unexpected, missing = self.difference(expected)
        if unexpected or missing:
            raise ScanFailed(
                f"{self.target} ({self.address}, scanned from {self.scanned_from}): "
                f"unexpected open ports: {self._names(unexpected)}; "
                f"expected but not open: {', '.join(map(str, sorted(missing))) or 'none'}\n"
                + self.table())

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "address": self.address,
                "scanned_from": self.scanned_from, "command": self.command,
                "seconds": round(self.seconds, 3), "open_ports": sorted(self.open_ports),
                "ports": [asdict(p) for p in self.ports]}

    def cases(self) -> list[Case]:
        return [Case(name=p.describe(), classname=f"ports.{self.target}",
                     output=f"state {p.state}") for p in self.ports]

    def summary(self) -> str:
        return (f"{self.target} ({self.address}): {len(self.open_ports)} open TCP ports: "
                f"{self._names(self.open_ports)}")

    def table(self) -> str:
        return text_table(["port", "state", "service", "product", "version"],
                          [[f"{p.number}/{p.protocol}", p.state, p.service, p.product,
                            " ".join(x for x in (p.version, p.extrainfo) if x)]
                           for p in self.ports])

    def __bool__(self) -> bool:
        return bool(self.open_ports)


def parse_nmap_xml(text: str, *, what: str) -> tuple[str, list[Port]]:
    """(address, ports) of the first host in nmap's ``-oX`` output."""
    try:
        root = ET.fromstring(text)  # noqa: S314 - nmap's own output; expat limits entity expansion
    except ET.ParseError as exc:
        raise ScanError(f"{what}: nmap's XML output does not parse ({exc}): {text[:300]!r}") \
            from None
    if root.tag != "nmaprun":
        raise ScanError(f"{what}: not nmap XML output (root element {root.tag!r})")
    host = root.find("host")
    if host is None:
        raise ScanError(f"{what}: nmap reported no host (is it down or unreachable?); "
                        f"{root.findtext('runstats/finished') or ''}")
    address = next((a.get("addr", "") for a in host.findall("address")
                    if a.get("addrtype", "").startswith("ipv")), "")
    ports: list[Port] = []
    for element in host.findall("ports/port"):
        state = element.find("state")
        service = element.find("service")
        svc = service.attrib if service is not None else {}
        ports.append(Port(
            number=int(element.get("portid", "0")), protocol=element.get("protocol", "tcp"),
            state=state.get("state", "") if state is not None else "",
            service=svc.get("name", ""), product=svc.get("product", ""),
            version=svc.get("version", ""), extrainfo=svc.get("extrainfo", ""),
            scripts={s.get("id", ""): s.get("output", "") for s in element.findall("script")}))
    return address, sorted(ports, key=lambda p: (p.protocol, p.number))


def port_list(ports: Iterable[int] | str | None) -> str | None:
    """nmap's ``-p`` value from numbers or a checked spec like ``"1-1024,8080"``."""
    if ports is None:
        return None
    if isinstance(ports, str):
        for part in ports.split(","):
            bounds = part.split("-")
            if not (1 <= len(bounds) <= 2 and all(b.isdigit() and 0 < int(b) < 65536
                                                   for b in bounds)):
                raise ConfigError(f"ports {ports!r}: {part!r} is not a port or a range "
                                  "like 1-1024 (numbers 1-65535)")
        return ports
    numbers = sorted({int(p) for p in ports})
    if not numbers or any(not 0 < n < 65536 for n in numbers):
        raise ConfigError(f"ports {numbers}: give port numbers between 1 and 65535")
    return ",".join(map(str, numbers))


Versions = bool | Literal["light"]


def nmap_argv(address: str, *, ports: str | None, versions: Versions,
              scripts: Iterable[str] = ()) -> list[str]:
    """The nmap command line: no DNS, no ping, XML on stdout.

    ``versions``: False (no -sV), "light" (-sV --version-light) or True (-sV, every
    probe: over a minute under TCG on a service that sends no banner).
    """
    argv = ["nmap", "-oX", "-", "-n", "-Pn", "--reason"]
    if ports:
        argv += ["-p", ports]
    if versions not in (True, False, "light"):
        raise ConfigError(f"versions={versions!r}: use False, 'light' or True")
    if versions:
        argv += ["-sV"] + (["--version-light"] if versions == "light" else [])
    names = list(scripts)
    for name in names:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"nmap script {name!r}: give script names like ssh-hostkey")
    if names:
        argv += ["--script", ",".join(names)]
    argv.append(address)
    return argv


def address_of(lab: Lab, target: Machine, from_node: Machine | None) -> str:
    """The lab address of ``target``, on a segment ``from_node`` shares if there is one."""
    network = lab.current_network
    if network is None or target.name not in network.machines:
        raise ConfigError(f"{target.name} is on no lab network; scan it by address "
                          "(address=...) or from the host (without from_node)")
    nics = network.plan.node(target.name).nics
    if from_node is not None and from_node.name in network.machines:
        shared = {n.segment for n in network.plan.node(from_node.name).nics}
        for nic in nics:
            if nic.segment in shared and nic.address:
                return nic.address.split("/")[0]
    for nic in nics:
        if nic.address:
            return nic.address.split("/")[0]
    raise ConfigError(f"{target.name} has no address on the lab network; give one in the "
                      "topology's addresses")


def scan_ports(target: Machine | str, *, lab: Lab | None = None,
               from_node: Machine | None = None, ports: Iterable[int] | str | None = None,
               versions: Versions = False, scripts: Iterable[str] = (),
               timeout: float = NMAP_TIMEOUT) -> PortReport:
    """Scan ``target`` (a lab machine or an address) with nmap.

    From ``from_node`` (a namespace host runs the host's nmap; a VM needs nmap
    installed, as netlab has), or else from the host: a machine's ``ports`` are
    then forwarded to 127.0.0.1 and reported under their guest numbers.
    """
    spec = port_list(ports)
    name = target if isinstance(target, str) else target.name
    started = time.monotonic()
    if isinstance(target, str):
        try:
            address = str(ipaddress.ip_address(target))
        except ValueError:
            raise ConfigError(f"scan target {target!r} is neither a lab machine nor an IP "
                              "address") from None
    elif from_node is not None:
        if lab is None:
            raise ConfigError("scanning a machine from a node needs the lab (lab=...)")
        address = address_of(lab, target, from_node)
    else:
        return _scan_forwarded(target, spec, versions, scripts, timeout, started)
    argv = nmap_argv(address, ports=spec, versions=versions, scripts=scripts)
    what = f"port scan of {name} ({address})"
    if from_node is None:
        output = _run_on_host(argv, what, timeout)
        scanned_from = "host"
    else:
        result = from_node.execute(shlex.join(argv), timeout=timeout)
        if result.failed:
            hint = (" (nmap is not installed there: scan from a namespace host or a netlab VM)"
                    if result.rc == 127 else "")
            raise ScanError(f"{what} from {from_node.name}: nmap exited with status "
                            f"{result.rc}{hint}: {(result.stderr or result.stdout)[-800:]}")
        output = result.stdout
        scanned_from = from_node.name
    found_address, found = parse_nmap_xml(output, what=what)
    return PortReport(name, found_address or address, scanned_from, argv, found,
                      time.monotonic() - started)


def _run_on_host(argv: list[str], what: str, timeout: float) -> str:
    nmap = require("nmap", "to scan ports")
    try:
        proc = subprocess.run([nmap, *argv[1:]], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ScanError(f"{what}: nmap did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        raise ScanError(f"{what}: nmap exited with status {proc.returncode}: "
                        f"{proc.stderr[-800:]}")
    return proc.stdout


def _scan_forwarded(target: Machine, spec: str | None, versions: Versions,
                    scripts: Iterable[str],
                    timeout: float, started: float) -> PortReport:
    """Scan a machine's forwarded ports from the host; numbers reported as the guest's."""
    if spec is None or "-" in spec:
        raise ConfigError(f"scanning {target.name} from the host needs the guest ports to "
                          "forward (ports=[22, 80]); or scan it from a lab node (from_node=...)")
    guest_ports = [int(p) for p in spec.split(",")]
    host_ports = {target.forward_port(p): p for p in guest_ports}
    argv = nmap_argv("127.0.0.1", ports=",".join(map(str, host_ports)), versions=versions,
                     scripts=scripts)
    output = _run_on_host(argv, f"port scan of {target.name} (forwarded ports)", timeout)
    _, found = parse_nmap_xml(output, what=f"port scan of {target.name}")
    # QEMU accepts on a forwarded port whether or not the guest listens: ask the guest
    listening = target.listening_ports()
    mapped = []
    for p in found:
        number = host_ports.get(p.number, p.number)
        state = p.state if number in listening else "closed"
        service = p.service if number in listening else ""
        mapped.append(Port(number, p.protocol, state, service,
                           p.product if service else "", p.version if service else "",
                           p.extrainfo if service else "", p.scripts if service else {}))
    return PortReport(target.name, "127.0.0.1 (forwarded)", "host", argv, mapped,
                      time.monotonic() - started)
