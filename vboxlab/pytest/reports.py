"""What a failing test's report carries, the snapshot timelines, and the terminal summary.

A failing test that used a lab gets, as report sections: the last 40 lines of
each machine's console and of the lab log, and for a network test the seed of
its links' randomness (to replay the failure) and the packet captures, copied
beside the test results.
"""

from __future__ import annotations

import shutil

import pytest

from vboxlab.errors import VboxlabError
from vboxlab.lab import Lab
from vboxlab.logs import tail
from vboxlab.net.fabric.control import FabricError
from vboxlab.net.network import Network
from vboxlab.pytest.options import RunState
from vboxlab.report.timeline import render_svg
from vboxlab.security.results import text_table
from vboxlab.snapshots import safe_name


def failure_sections(item: pytest.Item, lab: Lab, state: RunState,
                     report: pytest.TestReport) -> None:
    """Add consoles, the lab log, the network seed and captures to a failed test's report."""
    network = lab.current_network
    if network is not None and "network" in getattr(item, "fixturenames", ()):
        report.sections.append((
            "vboxlab network seed",
            f"topology {network.topology.name} ran with seed {network.seed}; replay the same "
            f"drops and delays with @pytest.mark.lab(topology=..., seed={network.seed})"))
        attach_captures(network, lab, state, item, report)
        report.sections.append(("vboxlab flows", flow_summary(network)))
    for machine in list(lab):
        text = tail(machine.console_log, 40)
        report.sections.append((f"vboxlab console of {machine.name}", text or "(empty)"))
    lab_log = lab.dir / "lab.log"
    if lab_log.is_file():
        report.sections.append(("vboxlab lab log", tail(lab_log, 40)))


def check_fabric(item: pytest.Item, lab: Lab | None, cause: BaseException | None) -> None:
    """Fail a test whose network fabric died while it ran, saying so (not just "ping failed")."""
    network = lab.current_network if lab is not None else None
    if network is None or "network" not in getattr(item, "fixturenames", ()):
        return
    try:
        network.fabric.check_alive()
    except VboxlabError as exc:
        raise FabricError(f"{exc} (it died while {item.nodeid} ran; every link of topology "
                          f"{network.topology.name} was cut from then on)") from cause


def attach_captures(network: Network, lab: Lab, state: RunState, item: pytest.Item,
                    report: pytest.TestReport) -> None:
    """Copy the network's pcaps next to the test results and name them in the report."""
    try:
        network.fabric.flush()
    except VboxlabError as exc:
        report.sections.append(("vboxlab packet captures", f"could not flush them: {exc}"))
        return
    target = state.timeline_dir / "pcaps" / safe_name(item.nodeid, 60)
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for pcap in sorted((lab.dir / "captures").glob("*.pcap")):
        shutil.copyfile(pcap, target / pcap.name)
        copied.append(str(target / pcap.name))
    report.sections.append(("vboxlab packet captures", "\n".join(copied) or "(none)"))


def flow_summary(network: Network, limit: int = 40) -> str:
    """The network's flows as a table (the first ``limit``), or why they could not be read."""
    try:
        flows = network.flows()
    except VboxlabError as exc:
        return f"could not read the flows: {exc}"
    if not flows:
        return "(no IP traffic captured)"
    rows = flows.table()
    shown = text_table(["proto", "app", "client", "server", "packets", "bytes", "links"],
                       rows[:limit])
    more = f"\n... and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"{len(rows)} flows\n{shown}{more}"


def write_timelines(lab: Lab, state: RunState) -> None:
    """An SVG timeline per machine that has snapshots; each machine is tried."""
    errors = []
    for machine in list(lab):
        if len(machine.snapshots) == 0:
            continue
        try:
            state.timeline_dir.mkdir(parents=True, exist_ok=True)
            path = state.timeline_dir / f"vboxlab-timeline-{lab.id}-{machine.name}.svg"
            path.write_text(render_svg(machine.snapshots, machine.name, lab.id))
            state.timelines.append(path)
        except OSError as exc:
            errors.append(f"{machine.name}: {exc}")
    if errors:
        raise VboxlabError(f"could not write snapshot timelines to {state.timeline_dir}: "
                           + "; ".join(errors))


def terminal_summary(reporter: pytest.TerminalReporter, state: RunState) -> None:
    for text in state.kept:
        reporter.write_sep("=", "vboxlab: kept labs")
        for line in text.splitlines():
            reporter.write_line(line)
    if state.timelines:
        reporter.write_sep("-", "vboxlab: snapshot timelines")
        for path in state.timelines:
            reporter.write_line(str(path))
    if state.report_page is not None:
        reporter.write_sep("-", "vboxlab: lab report")
        reporter.write_line(f"{state.report_page} (rerun: vboxlab report reproduce "
                            f"{state.report_page.parent / 'lab-manifest.json'})")
