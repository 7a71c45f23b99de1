"""Intrusion detection in tests: the ``ids`` fixture and ``@pytest.mark.ids(...)``.

``@pytest.mark.ids(rules=["my.rules"], expect=["sid:1000003"], forbid="any")``
on a test using the ``network`` fixture runs Suricata over the captures of
every link after the test body: an alert that is not expected (``forbid="any"``,
the default; or only the listed sids; ``"none"`` for no check) or an expected
one that never came fails the test, naming the alerts. ``ids.alerts()`` runs it
by hand at any point. The alerts land as JSON and JUnit in the scan folder and
in a failing test's report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vboxlab.errors import ConfigError, ScanFailed
from vboxlab.net.network import Network
from vboxlab.pytest.options import state_of
from vboxlab.security.ids import IdsReport, Suricata, inspect_network, parse_sid
from vboxlab.security.results import write_json, write_junit

REPORTS_KEY = pytest.StashKey[list[IdsReport]]()


class Ids:
    """The ``ids`` fixture: Suricata over the test network's captures, on demand."""

    def __init__(self, network: Network, rules: Sequence[Path], workdir: Path,
                 reports: list[IdsReport]) -> None:
        self.network = network
        self.engine = Suricata(extra=list(rules))
        self.workdir = workdir
        self.reports = reports

    def __repr__(self) -> str:
        return f"<ids of {self.network.topology.name}: {self.engine}>"

    def alerts(self, a: str | None = None, b: str | None = None) -> IdsReport:
        """Alerts over every captured link so far (or the link ``a``-``b``)."""
        if (a is None) != (b is None):
            raise ConfigError("ids.alerts(a, b) takes both ends of a link, or neither")
        links = [(a, b)] if a is not None and b is not None else None
        folder = self.workdir / f"run{len(self.reports) + 1}"
        report = inspect_network(self.network, self.engine, folder, links)
        self.reports.append(report)
        return report


def marker_settings(item: pytest.Item) -> tuple[list[Path], list[int], str | list[int]] | None:
    """(rule files, expected sids, forbid) of the test's ``ids`` marker, checked; or None."""
    marker = item.get_closest_marker("ids")
    if marker is None:
        return None
    unknown = set(marker.kwargs) - {"rules", "expect", "forbid"}
    if unknown or marker.args:
        raise ConfigError(f"{item.nodeid}: @pytest.mark.ids takes rules=, expect= and forbid= "
                          f"keywords (got {', '.join(sorted(unknown)) or 'positional values'})")
    rules = marker.kwargs.get("rules") or []
    if isinstance(rules, (str, Path)):
        rules = [rules]
    root = item.config.rootpath
    paths = [Path(r) if Path(r).is_absolute() else root / r for r in rules]
    expect = marker.kwargs.get("expect") or []
    if isinstance(expect, (str, int)):
        expect = [expect]
    forbid = marker.kwargs.get("forbid", "any")
    if isinstance(forbid, str) and forbid not in ("any", "none"):
        raise ConfigError(f"{item.nodeid}: ids(forbid={forbid!r}): use 'any', 'none' or a "
                          "list of rule ids")
    checked_forbid = forbid if isinstance(forbid, str) else [parse_sid(s) for s in forbid]
    return paths, [parse_sid(s) for s in expect], checked_forbid


def user_rules(config: pytest.Config) -> list[Path]:
    return [Path(p) for p in config.getoption("--lab-ids-rules")]


def _workdir(item: pytest.Item, network: Network) -> Path:
    return network.state_dir / "ids" / re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-100:]


@pytest.fixture
def ids(network: Network, request: pytest.FixtureRequest) -> Iterator[Ids]:
    """Suricata over this test's network captures: ``ids.alerts()`` -> an IdsReport."""
    settings = marker_settings(request.node)
    extra = user_rules(request.config) + (settings[0] if settings else [])
    reports = request.node.stash.setdefault(REPORTS_KEY, [])
    yield Ids(network, extra, _workdir(request.node, network), reports)


def check_marker(item: pytest.Item, network: Network | None) -> None:
    """After a test body: the marker's IDS check over the network's captures."""
    settings = marker_settings(item)
    if settings is None:
        return
    if network is None or "network" not in getattr(item, "fixturenames", ()):
        raise ConfigError(f"{item.nodeid} is marked ids but uses no network: add the network "
                          "fixture and @pytest.mark.lab(topology=...)")
    rules, expect, forbid = settings
    engine = Suricata(extra=user_rules(item.config) + rules)
    report = inspect_network(network, engine, _workdir(item, network) / "marker")
    item.stash.setdefault(REPORTS_KEY, []).append(report)
    try:
        report.check(expect, forbid)
    except ScanFailed as exc:
        failure = str(exc)
    else:
        return
    pytest.fail(failure, pytrace=False)  # reads as the test's assertion, not a traceback


def save_reports(item: pytest.Item) -> list[tuple[str, str]]:
    """Write the test's IDS reports (JSON, JUnit) and return report sections for them."""
    reports = item.stash.get(REPORTS_KEY, [])
    if not reports:
        return []
    folder = state_of(item.config).scan_dir
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid).strip("_")[:150]
    write_json(reports, folder / f"{stem}.ids.json")
    write_junit(reports, folder / f"{stem}.ids.xml")
    return [(f"vboxlab IDS alerts: {r.target}", f"{r.summary()}\n{r.table()}" if r else
             r.summary()) for r in reports]
