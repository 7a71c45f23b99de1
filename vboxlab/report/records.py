"""What a lab report holds about each test, gathered from the lab's live objects.

Plain data (dataclasses that turn into JSON), so the HTML report, Allure and
the JSON beside them show the same facts. Gathering is done while the test's
machines and network still exist (right after the test body).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import VboxlabError
from vboxlab.logs import tail
from vboxlab.net.topology import describe_impairment

if TYPE_CHECKING:
    from vboxlab.machine import Machine
    from vboxlab.net.network import Network

#: flows shown per test (the rest are counted)
MAX_FLOWS = 200
CONSOLE_LINES = 40


@dataclass
class MachineRecord:
    name: str
    provider: str
    template: str | None
    version: str | None
    digest: str | None
    console: str

    @property
    def label(self) -> str:
        return f"{self.template}@{self.version}" if self.template else (self.provider or "")


@dataclass
class LinkRecord:
    link: str
    a_to_b: str
    b_to_a: str
    counters: dict[str, dict[str, int]]


@dataclass
class NetworkRecord:
    topology: str
    source: str
    seed: int
    svg: str
    links: list[LinkRecord] = field(default_factory=list)
    flows: list[dict[str, Any]] = field(default_factory=list)
    flows_total: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class ScanRecord:
    kind: str
    target: str
    summary: str
    table: str
    failed: bool


@dataclass
class TestRecord:
    """One test of the run as the report shows it."""

    __test__ = False  # not a test class, whatever pytest thinks of the name
    nodeid: str
    outcome: str = "passed"  # passed, failed, skipped, error
    duration: float = 0.0
    started: float = field(default_factory=time.time)
    phase: str | None = None  # where it failed or was skipped
    message: str = ""
    machines: list[MachineRecord] = field(default_factory=list)
    network: NetworkRecord | None = None
    alerts: list[dict[str, Any]] = field(default_factory=list)
    ids_summaries: list[str] = field(default_factory=list)
    scans: list[ScanRecord] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)  # (label, path in the report)
    #: the snapshots this test took: machine, name, kind, parent, size
    snapshots: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TestRecord:
        """Back from :meth:`to_json` (a worker's ``report.json``, written by vboxlab)."""
        fields = dict(data)
        fields["machines"] = [MachineRecord(**m) for m in data.get("machines", [])]
        network = data.get("network")
        if network is not None:
            network = dict(network)
            network["links"] = [LinkRecord(**link) for link in network.get("links", [])]
            fields["network"] = NetworkRecord(**network)
        fields["scans"] = [ScanRecord(**scan) for scan in data.get("scans", [])]
        fields["files"] = [tuple(pair) for pair in data.get("files", [])]
        return cls(**fields)


def machine_record(machine: Machine, *, console: bool = True,
                   digests: dict[Path, str] | None = None) -> MachineRecord:
    """A machine's template, version and manifest digest (``digests`` caches them by
    template folder), and its console tail when ``console``."""
    built = machine.template
    digest = None
    if built is not None:
        cache = digests if digests is not None else {}
        if built.folder not in cache:
            with contextlib.suppress(OSError):  # a template folder gone: no digest
                cache[built.folder] = built.manifest_digest
        digest = cache.get(built.folder)
    return MachineRecord(machine.name, machine.provider or "", built.template.name if built else
                         None, built.template.version if built else None, digest,
                         tail(machine.console_log, CONSOLE_LINES) if console else "")


def test_snapshots(machine: Machine, nodeid: str) -> list[dict[str, Any]]:
    """The snapshots ``nodeid`` took on ``machine``, oldest first (its slice of the timeline)."""
    return [{"machine": machine.name, "name": node.name, "kind": node.kind,
             "parent": node.parent, "size": node.size}
            for node in sorted(machine.snapshots, key=lambda n: n.created)
            if node.test == nodeid]


def network_record(network: Network, svg: str) -> NetworkRecord:
    """The network's topology picture, links with impairments and counters, and flows."""
    record = NetworkRecord(network.topology.name, network.topology.source, network.seed, svg)
    try:
        stats = network.fabric.stats() if not network.closed else {}
    except VboxlabError as exc:
        stats = {}
        record.problems.append(f"link counters: {exc}")
    for link in network.links:
        counters = {"a_to_b": stats.get(link.a_to_b_dir, {}),
                    "b_to_a": stats.get(link.b_to_a_dir, {})}
        record.links.append(LinkRecord(f"{link.a}<->{link.b}", describe_impairment(link.a_to_b),
                                       describe_impairment(link.b_to_a), counters))
    try:
        flows = network.flows()
    except VboxlabError as exc:
        record.problems.append(f"flows: {exc}")
    else:
        record.flows_total = len(flows)
        record.flows = [f.to_dict() for f in list(flows)[:MAX_FLOWS]]
    return record
