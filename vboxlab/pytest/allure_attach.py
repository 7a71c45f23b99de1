"""Allure results of a lab test: labels and attachments (only with allure-pytest and --alluredir).

Labels: ``template`` (``tiny@1.0.0``, one per machine's template), ``provider``,
``topology`` and ``seed``. Attachments: each machine's console tail, the
topology SVG, flows and IDS alerts and scan results as JSON, and the pcaps.
"""

from __future__ import annotations

import json
from pathlib import Path

import allure
from allure_commons.types import AttachmentType

from vboxlab.report.records import TestRecord


def attach_record(record: TestRecord, pcaps: list[Path]) -> None:
    """Label and attach one test's facts to its Allure result."""
    for label, value in sorted({("template", m.label) for m in record.machines if m.template} |
                               {("provider", m.provider) for m in record.machines}):
        allure.dynamic.label(label, value)
    for machine in record.machines:
        if machine.console:
            allure.attach(machine.console, name=f"console of {machine.name}",
                          attachment_type=AttachmentType.TEXT)
    network = record.network
    if network is not None:
        allure.dynamic.label("topology", network.topology)
        allure.dynamic.label("seed", str(network.seed))
        allure.attach(network.svg, name=f"topology {network.topology}",
                      attachment_type=AttachmentType.SVG)
        allure.attach(json.dumps(network.flows, indent=1), name="flows",
                      attachment_type=AttachmentType.JSON)
    if record.alerts or record.ids_summaries:
        allure.attach(json.dumps(record.alerts, indent=1), name="IDS alerts",
                      attachment_type=AttachmentType.JSON)
    for scan in record.scans:
        allure.attach(f"{scan.summary}\n{scan.table}", name=f"scan {scan.kind} of {scan.target}",
                      attachment_type=AttachmentType.TEXT)
    for pcap in pcaps:
        allure.attach.file(str(pcap), name=pcap.name, attachment_type=AttachmentType.PCAP)
