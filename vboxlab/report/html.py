"""The lab report as one self-contained HTML page (no CDN: it opens from file://).

A summary (totals, a filter by outcome, the snapshot timelines, the lab logs)
and a block per test: outcome and duration, each machine's template@version
and manifest digest, the topology drawn, its links with impairments and
counters, flows, IDS alerts, scan results, console tails and links to the
pcaps and logs kept beside it. ``report.json`` holds the same records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from vboxlab.report.manifest import RunManifest, read_manifest, write_manifest
from vboxlab.report.records import TestRecord

REPORT_PAGE = "index.html"
DROP_KEYS = ("drop_loss", "drop_queue", "drop_down", "drop_mtu", "drop_hops", "drop_full",
             "drop_bad")


@dataclass
class RunReport:
    """One run: its manifest, its tests, and the lab-wide pictures and logs."""

    manifest: RunManifest
    tests: list[TestRecord] = field(default_factory=list)
    timelines: list[tuple[str, str]] = field(default_factory=list)  # (machine, SVG text)
    lab_logs: list[tuple[str, str]] = field(default_factory=list)  # (label, path in report)

    def totals(self) -> dict[str, Any]:
        counts = {o: sum(1 for t in self.tests if t.outcome == o)
                  for o in ("passed", "failed", "skipped", "error")}
        machines = {(m.name, m.template, m.version) for t in self.tests for m in t.machines}
        return {"total": len(self.tests), **counts,
                "duration": sum(t.duration for t in self.tests), "machines": len(machines),
                "alerts": sum(len(t.alerts) for t in self.tests)}


def _drops(counters: dict[str, int]) -> str:
    if not counters:
        return "-"
    return str(sum(counters.get(key, 0) for key in DROP_KEYS))


_environment = Environment(loader=PackageLoader("vboxlab.report", "templates"),
                           autoescape=select_autoescape(["html", "j2"]),
                           trim_blocks=True, lstrip_blocks=True)


def render_report(run: RunReport) -> str:
    template = _environment.get_template("report.html.j2")
    return template.render(manifest=run.manifest, tests=run.tests, totals=run.totals(),
                           timelines=run.timelines, lab_logs=run.lab_logs, drops=_drops)


def write_report(folder: Path, run: RunReport) -> Path:
    """``index.html``, ``report.json`` and ``lab-manifest.json`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    page = folder / REPORT_PAGE
    scratch = folder / f".{REPORT_PAGE}.tmp"
    scratch.write_text(render_report(run))
    scratch.replace(page)
    (folder / "report.json").write_text(json.dumps(
        {"totals": run.totals(), "tests": [t.to_json() for t in run.tests],
         "timelines": run.timelines, "lab_logs": run.lab_logs}, indent=1) + "\n")
    write_manifest(run.manifest, folder)
    return page


def merge_workers(folder: Path, workers: list[str], manifest: RunManifest) -> Path | None:
    """One report in ``folder`` from the reports pytest-xdist workers wrote in its subfolders.

    Their records, timelines and logs are joined (paths made relative to ``folder``) and
    their manifests folded into ``manifest`` (the controller's: its pytest arguments).
    """
    run = RunReport(manifest)
    for worker in sorted(workers):
        part = folder / worker
        if not (part / "report.json").is_file():
            continue
        data = json.loads((part / "report.json").read_text())
        for entry in data["tests"]:
            record = TestRecord.from_json(entry)
            record.files = [(label, f"{worker}/{path}") for label, path in record.files]
            run.tests.append(record)
        run.timelines += [(f"{name} ({worker})", svg) for name, svg in data["timelines"]]
        run.lab_logs += [(label, f"{worker}/{path}") for label, path in data["lab_logs"]]
        theirs = read_manifest(part)
        for part_name in ("templates", "topologies", "seeds", "tests", "accelerators"):
            getattr(manifest, part_name).update(getattr(theirs, part_name))
    if not run.tests:
        return None
    run.tests.sort(key=lambda t: t.started)
    return write_report(folder, run)
