"""Intrusion detection in tests: the ``ids`` fixture and ``@pytest.mark.ids(...)``.

``@pytest.mark.ids(rules=["my.rules"], expect=["sid:1000003"], forbid="any")``
on a test using the ``network`` fixture runs Suricata over the captures of
every link after the test body: an alert that is not expected (``forbid="any"``,
the default; or only the listed sids; ``"none"`` for no check) or an expected
one that never came fails the test, naming the alerts. ``ids.alerts()`` runs it
by hand at any point. With ``--lab-ids live`` Suricata reads every link while
the test runs (the fabric tees it the traffic) and ``ids.wait_for(sid)`` waits
for an alert as it happens. The alerts land as JSON and JUnit in the scan folder and
in a failing test's report.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from vboxlab.errors import ConfigError, ScanFailed, VboxlabError
from vboxlab.ledger import Ledger
from vboxlab.net.network import Network
from vboxlab.pytest.options import state_of
from vboxlab.security.ids import Alert, IdsReport, Suricata, inspect_network, parse_sid
from vboxlab.security.ids_live import LiveIds
from vboxlab.security.results import write_json, write_junit

REPORTS_KEY = pytest.StashKey[list[IdsReport]]()
LIVE_KEY = pytest.StashKey[LiveIds]()


class Ids:
    """The ``ids`` fixture: Suricata over the test network's captures, on demand, or live."""

    def __init__(self, network: Network, rules: Sequence[Path], workdir: Path,
                 reports: list[IdsReport], live: LiveIds | None = None) -> None:
        self.network = network
        self.engine = Suricata(extra=list(rules))
        self.workdir = workdir
        self.reports = reports
        self.live = live

    def __repr__(self) -> str:
        mode = "live" if self.live is not None else "offline"
        return f"<ids of {self.network.topology.name} ({mode}): {self.engine}>"

    def wait_for(self, sid: int | str, timeout: float = 10.0) -> Alert:
        """Live mode (``--lab-ids live``): wait until rule ``sid`` fires; its first alert."""
        if self.live is None:
            raise ConfigError("ids.wait_for needs the live IDS: run with --lab-ids live "
                              "(offline, ids.alerts() reads the captures so far)")
        return self.live.wait_for(sid, timeout)

    def alerts(self, a: str | None = None, b: str | None = None) -> IdsReport:
        """Alerts over every captured link so far (or the link ``a``-``b``).

        Live: what Suricata has raised so far on every link (a packet may take a
        moment to be seen; ``wait_for`` waits for one).
        """
        if (a is None) != (b is None):
            raise ConfigError("ids.alerts(a, b) takes both ends of a link, or neither")
        if self.live is not None:
            report = self.live.alerts()
            if a is not None:
                report.alerts = [x for x in report.alerts if f"{a}<->{b}" in x.links
                                 or f"{b}<->{a}" in x.links]
            return report
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
    yield Ids(network, extra, _workdir(request.node, network), reports,
              request.node.stash.get(LIVE_KEY, None))


def _inspect(item: pytest.Item, network: Network, rules: list[Path]) -> IdsReport:
    live = item.stash.get(LIVE_KEY, None)
    if live is not None:
        return live.stop()
    engine = Suricata(extra=user_rules(item.config) + rules)
    return inspect_network(network, engine, _workdir(item, network) / "marker")


def alerts_after_failure(item: pytest.Item, network: Network | None) -> None:
    """A test marked ids that failed on its own: its alerts still go into its report."""
    settings = marker_settings(item)
    if settings is None or network is None or "network" not in getattr(item, "fixturenames",
                                                                      ()):
        return
    try:
        report = _inspect(item, network, settings[0])
    except VboxlabError as exc:
        report = IdsReport(f"network {network.topology.name}", error=str(exc))
    item.stash.setdefault(REPORTS_KEY, []).append(report)


def check_marker(item: pytest.Item, network: Network | None) -> None:
    """After a test body: the marker's IDS check over the network's captures."""
    settings = marker_settings(item)
    if settings is None:
        return
    if network is None or "network" not in getattr(item, "fixturenames", ()):
        pytest.fail(f"{item.nodeid} is marked ids but uses no network: add the network "
                    "fixture and @pytest.mark.lab(topology=...)", pytrace=False)
    rules, expect, forbid = settings
    report = _inspect(item, network, rules)
    item.stash.setdefault(REPORTS_KEY, []).append(report)
    try:
        report.check(expect, forbid)
    except ScanFailed as exc:
        failure = str(exc)
    else:
        return
    pytest.fail(failure, pytrace=False)  # reads as the test's assertion, not a traceback


def ids_mode(config: pytest.Config) -> str:
    mode = str(config.getoption("--lab-ids") or config.getini("lab_ids"))
    if mode not in ("offline", "live"):
        raise pytest.UsageError(f"--lab-ids {mode!r}: use offline (after the test, from the "
                                "captures) or live (Suricata reading each link as it runs)")
    return mode


def start_live(item: pytest.Item, network: Network, ledger: Ledger) -> LiveIds | None:
    """With ``--lab-ids live``, a test that uses the IDS gets Suricata on every link now."""
    if ids_mode(item.config) != "live" or (item.get_closest_marker("ids") is None and
                                           "ids" not in getattr(item, "fixturenames", ())):
        return None
    settings = marker_settings(item)
    engine = Suricata(extra=user_rules(item.config) + (settings[0] if settings else []))
    live = LiveIds(network, engine, _workdir(item, network) / "live", ledger).start()
    item.stash[LIVE_KEY] = live
    return live


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
