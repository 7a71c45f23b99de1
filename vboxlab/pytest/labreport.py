"""The lab report (``--lab-report DIR``), its manifest, Allure attachments, JUnit properties.

Right after each test body (while its machines and network exist) the facts
are gathered once into a :class:`~vboxlab.report.records.TestRecord`: they go
into the HTML report, into Allure when ``--alluredir`` is given (and
allure-pytest installed), and the run's seeds and template digests into
pytest's own JUnit as suite properties. A failing test's pcaps and full
console logs are copied beside the report. The manifest is kept for every run
(so the seeds drawn are known) and written with the report.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from vboxlab.errors import VboxlabError
from vboxlab.report.html import RunReport, merge_workers, write_report
from vboxlab.report.manifest import TemplateUse, new_manifest, qemu_version, topology_key
from vboxlab.report.records import (
    ScanRecord,
    TestRecord,
    machine_record,
    network_record,
    test_snapshots,
)
from vboxlab.report.topology_svg import render_topology_svg
from vboxlab.templates.repository import file_sha256

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.net.network import Network

MAX_MESSAGE = 20_000


def slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid).strip("_")[-120:]


def read_seed_file(path: Path) -> dict[str, int]:
    """``--lab-seed-file``: test id -> seed (a rerun's seeds), checked."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise pytest.UsageError(f"--lab-seed-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise pytest.UsageError(f"--lab-seed-file {path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
            for k, v in data.items()):
        raise pytest.UsageError(f"--lab-seed-file {path}: want a JSON object of test id -> "
                                "integer seed")
    return data


class LabReport:
    """Gathers each test's facts and writes the report at the end of the run."""

    def __init__(self, config: pytest.Config, folder: Path | None, worker: str | None) -> None:
        self.config = config
        self.folder = (folder / worker if worker else folder) if folder else None
        self.manifest = new_manifest(list(config.invocation_params.args), config.rootpath,
                                     behaviour_options(config))
        self.records: dict[str, TestRecord] = {}
        self.timelines: list[tuple[str, str]] = []
        self.lab_logs: list[tuple[str, str]] = []
        self._svgs: dict[str, str] = {}
        self._digests: dict[Path, str] = {}  # template folder -> manifest digest
        self.suite_property: Callable[[str, object], None] | None = None
        self.allure = bool(config.pluginmanager.hasplugin("allure_pytest")
                           and config.getoption("--alluredir", None))
        #: pytest-xdist's controller: it runs no test, it joins the workers' reports
        self.xdist_controller = worker is None and bool(
            config.pluginmanager.hasplugin("xdist") and config.getoption("numprocesses", None)
            and config.getoption("dist", "no") != "no")

    def __repr__(self) -> str:
        return f"<LabReport {self.folder or '(manifest only)'}: {len(self.records)} tests>"

    def on_report(self, item: pytest.Item, report: pytest.TestReport, lab: Lab | None) -> None:
        record = self.records.setdefault(item.nodeid, TestRecord(item.nodeid))
        record.duration += report.duration
        if report.skipped:
            record.outcome, record.phase = "skipped", report.when
            record.message = _skip_reason(report)
        elif report.failed:
            record.outcome = "failed" if report.when == "call" else (
                "error" if record.outcome == "passed" else record.outcome)
            record.phase = report.when
            record.message = (record.message + "\n\n" if record.message else "") + \
                report.longreprtext[-MAX_MESSAGE:]
        self.manifest.tests[item.nodeid] = record.outcome
        if lab is not None and (report.when == "call" or (report.when == "setup"
                                                           and report.failed)):
            self._gather(item, lab, record, failed=report.failed)

    def _gather(self, item: pytest.Item, lab: Lab, record: TestRecord, *, failed: bool) -> None:
        """The test's facts; without a report or Allure only the manifest's (seeds, digests)."""
        shown = self.folder is not None or self.allure
        for machine in list(lab):
            found = machine_record(machine, console=shown, digests=self._digests)
            if shown:
                record.machines.append(found)
                record.snapshots += test_snapshots(machine, item.nodeid)
            if found.template and found.version and found.digest:
                key = f"{found.template}@{found.version}"
                if key not in self.manifest.templates:
                    self.manifest.templates[key] = TemplateUse(
                        name=found.template, version=found.version, digest=found.digest)
                    self._property(f"vboxlab.template.{key}", found.digest)
        self.manifest.accelerators.update(lab.accelerators())
        network = lab.current_network
        if network is not None and "network" in getattr(item, "fixturenames", ()):
            self.manifest.seeds[item.nodeid] = network.seed
            self._property(f"vboxlab.seed.{item.nodeid}", network.seed)
            source = Path(network.topology.source)
            key = topology_key(source, self.config.rootpath)
            if key not in self.manifest.topologies and source.is_file():
                self.manifest.topologies[key] = file_sha256(source)
            if shown:
                record.network = network_record(network, self._svg(network))
        if not shown:
            return
        self._security(item, record)
        pcaps = self._captures(network) if network is not None else []
        if failed and self.folder is not None:
            self._keep_files(item, lab, record, pcaps)
        if self.allure:  # pcaps of a failing test only: they can be large
            from vboxlab.pytest.allure_attach import attach_record

            attach_record(record, pcaps if failed else [])

    def _svg(self, network: Network) -> str:
        key = f"{network.topology.source}:{network.topology.name}"
        if key not in self._svgs:
            self._svgs[key] = render_topology_svg(network.topology)
        return self._svgs[key]

    def _security(self, item: pytest.Item, record: TestRecord) -> None:
        from vboxlab.pytest.ids import REPORTS_KEY as IDS_KEY
        from vboxlab.pytest.scan import RESULTS_KEY as SCAN_KEY

        for ids in item.stash.get(IDS_KEY, []):
            record.ids_summaries.append(ids.summary())
            record.alerts.extend(alert.to_dict() for alert in ids.alerts)
        scan = item.stash.get(SCAN_KEY, None)
        for result in (scan.results if scan is not None else []):
            record.scans.append(ScanRecord(result.kind, result.target, result.summary(),
                                           result.table(), bool(result)))

    @staticmethod
    def _captures(network: Network) -> list[Path]:
        found: list[Path] = []
        for link in network.links:
            if network.is_captured(link.a, link.b):
                try:
                    files = network.capture_files(link.a, link.b)
                except VboxlabError:
                    continue
                found += files["a_to_b"] + files["b_to_a"]
        return found

    def _keep_files(self, item: pytest.Item, lab: Lab, record: TestRecord,
                    pcaps: list[Path]) -> None:
        """A failing test's pcaps and full console logs, copied beside the report."""
        assert self.folder is not None
        target = self.folder / "files" / slug(item.nodeid)
        target.mkdir(parents=True, exist_ok=True)
        for pcap in pcaps:
            shutil.copyfile(pcap, target / pcap.name)
            record.files.append((f"capture {pcap.name}", f"files/{target.name}/{pcap.name}"))
        for machine in list(lab):
            if machine.console_log.is_file():
                name = f"console-{machine.name}.log"
                shutil.copyfile(machine.console_log, target / name)
                record.files.append((f"console log of {machine.name}",
                                     f"files/{target.name}/{name}"))

    def _property(self, name: str, value: object) -> None:
        if self.suite_property is not None:
            self.suite_property(name, value)

    def on_lab_closing(self, lab: Lab, timelines: list[Path]) -> None:
        """Before the lab goes: its log and its machines' snapshot timelines."""
        for path in timelines:
            if path.is_file():
                self.timelines.append((path.stem.rsplit("-", 1)[-1], path.read_text()))
        log = lab.dir / "lab.log"
        if self.folder is not None and log.is_file():
            target = self.folder / "files"
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, target / f"lab-{lab.id}.log")
            self.lab_logs.append((f"lab {lab.id}", f"files/lab-{lab.id}.log"))

    def write(self) -> Path | None:
        if self.folder is None:
            return None
        self.manifest.qemu = qemu_version()
        if self.xdist_controller:  # the workers ran the tests: join their reports
            workers = [p.name for p in self.folder.glob("gw*") if p.is_dir()]
            return merge_workers(self.folder, workers, self.manifest)
        run = RunReport(self.manifest, list(self.records.values()), self.timelines,
                        self.lab_logs)
        return write_report(self.folder, run)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr: Any = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr or "")


#: --lab-* options that change what tests do (a rerun repeats them); output places are left out
BEHAVIOUR_OPTIONS = ("--lab-provider", "--lab-template", "--lab-accel", "--lab-channel",
                     "--lab-libvirt-uri", "--lab-hosts", "--lab-boot-timeout",
                     "--lab-capture-limit", "--lab-capture-window", "--lab-ids",
                     "--lab-ids-rules",
                     "--lab-advisories", "--lab-debsecan", "--lab-security-suite",
                     "--lab-allowlist", "--lab-rules", "--lab-signatures", "--lab-profiles",
                     "--lab-compliance-as-tests", "--lab-snapshot-on-failure",
                     "--lab-snapshot-every", "--lab-snapshot-interval")


def behaviour_options(config: pytest.Config) -> dict[str, str | list[str] | bool]:
    """The run's --lab-* options that shape the tests, as given (defaults left out)."""
    found: dict[str, str | list[str] | bool] = {}
    for name in BEHAVIOUR_OPTIONS:
        value = config.getoption(name)
        if value is True:
            found[name] = True
        elif isinstance(value, list) and value:
            found[name] = [str(v) for v in value]
        elif value not in (None, False, [], "") and not isinstance(value, list):
            found[name] = str(value)
    if found.get("--lab-security-suite") == "bookworm-security":
        del found["--lab-security-suite"]  # the default
    return found


def report_folder(config: pytest.Config) -> Path | None:
    chosen = config.getoption("--lab-report")
    if not chosen:
        return None
    folder = Path(chosen)
    if folder.exists() and not folder.is_dir():
        raise pytest.UsageError(f"--lab-report {folder}: exists and is not a folder")
    return folder
