"""The ``scan`` fixture: security scans as assertions, their results attached to the report."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from vboxlab.errors import ConfigError
from vboxlab.lab import Lab
from vboxlab.pytest.options import state_of
from vboxlab.security.compliance import load_profile
from vboxlab.security.results import write_json, write_junit
from vboxlab.security.session import Scan, ScanSettings

RESULTS_KEY = pytest.StashKey[Scan]()


def settings_from(config: pytest.Config) -> ScanSettings:
    """The run's scan settings from the --lab-* options."""
    def path(name: str) -> Path | None:
        value = config.getoption(name)
        return Path(value) if value else None

    suite = config.getoption("--lab-security-suite")
    return ScanSettings(
        advisories=path("--lab-advisories"),
        debsecan=path("--lab-debsecan"),
        suite=None if suite in (None, "", "none") else str(suite),
        allowlist=path("--lab-allowlist"),
        rules=[Path(p) for p in config.getoption("--lab-rules")],
        signatures=[Path(p) for p in config.getoption("--lab-signatures")],
        profiles=[Path(p) for p in config.getoption("--lab-profiles")])


@pytest.fixture(scope="session")
def _vboxlab_scan(lab: Lab, request: pytest.FixtureRequest) -> Scan:
    return Scan(lab, settings_from(request.config))


@pytest.fixture
def _vboxlab_compliance_rule() -> str | None:
    """The one rule this test checks (``--lab-compliance-as-tests`` parametrizes it)."""
    return None


def compliance_rules(metafunc: pytest.Metafunc) -> None:
    """With --lab-compliance-as-tests, a test marked ``compliance(profile)`` runs per rule."""
    marker = metafunc.definition.get_closest_marker("compliance")
    if marker is None or not metafunc.config.getoption("--lab-compliance-as-tests"):
        return
    name = marker.kwargs.get("profile") or (marker.args[0] if marker.args else None)
    if name is None:
        raise ConfigError(f"{metafunc.definition.nodeid}: mark it "
                          "@pytest.mark.compliance(profile='ssh-baseline')")
    if "_vboxlab_compliance_rule" not in metafunc.fixturenames:
        raise ConfigError(f"{metafunc.definition.nodeid} is marked compliance but does not use "
                          "the scan fixture")
    profile = load_profile(name, settings_from(metafunc.config).profiles)
    metafunc.parametrize("_vboxlab_compliance_rule", [r.id for r in profile.rules],
                         ids=[r.id for r in profile.rules])


@pytest.fixture
def scan(_vboxlab_scan: Scan, lab: Lab, _vboxlab_compliance_rule: str | None,
         request: pytest.FixtureRequest) -> Iterator[Scan]:
    """Security scans of the lab's machines: ``scan.ports(node, from_node="client")``,
    ``scan.vulnerabilities(vm)``, ``scan.malware(vm, ["/srv"])``,
    ``scan.compliance(vm, profile="ssh-baseline")``. Each result is falsy when clean,
    prints as a table, and lands as JSON and JUnit XML in the scan folder.
    """
    _vboxlab_scan.results = []
    _vboxlab_scan.lab = lab  # a test may point it at a lab of its own
    _vboxlab_scan.only_rule = _vboxlab_compliance_rule
    request.node.stash[RESULTS_KEY] = _vboxlab_scan
    try:
        yield _vboxlab_scan
    finally:
        _save(request.node, _vboxlab_scan, state_of(request.config).scan_dir)


def _save(item: pytest.Item, scan: Scan, folder: Path) -> None:
    if not scan.results:
        return
    stem = folder / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")[:150]
    write_json(scan.results, stem.with_suffix(".json"))
    write_junit(scan.results, stem.with_suffix(".xml"))


def report_sections(item: pytest.Item) -> list[tuple[str, str]]:
    """A section per scan the test ran: its summary and table, and where the files are."""
    scan = item.stash.get(RESULTS_KEY, None)
    if scan is None:
        return []
    return [(f"vboxlab scan: {r.kind} of {r.target}", f"{r.summary()}\n{r.table()}")
            for r in scan.results]
