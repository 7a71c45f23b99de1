"""Command-line options, ini keys and markers of the plugin, and the settings read from them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vboxlab.errors import ConfigError
from vboxlab.net.fabric.control import CaptureRing

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.pytest.rollback import SharedVm

#: fixtures that put a test on a lab (it gets the ``vm`` marker)
VM_FIXTURES = frozenset({"lab", "vm", "network", "boot_media", "scan", "ids"})


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("vboxlab", "vboxlab: labs of real machines")
    group.addoption("--lab-provider", default=None,
                    help="Provider that runs the lab's machines (default: qemu)")
    group.addoption("--lab-template", default=None,
                    help="Template of the vm fixture and of lab.vm() without template= "
                         "(default: tiny)")
    group.addoption("--lab-dir", default=None,
                    help="Folder that holds one state folder per lab, private to you (mode "
                         "0700; default: $XDG_RUNTIME_DIR/vboxlab or /tmp/vboxlab-UID)")
    group.addoption("--lab-keep", action="store_true", default=False,
                    help="Keep machines and state after the run and print how to reach them")
    group.addoption("--lab-accel", default=None, choices=["auto", "kvm", "tcg"],
                    help="QEMU accelerator; auto uses KVM only if a probe boots a guest with it")
    group.addoption("--lab-channel", default=None, choices=["auto", "ssh"],
                    help="Command channel of QEMU machines: auto (the guest agent where the "
                         "template has one, else SSH) or ssh")
    group.addoption("--lab-libvirt-uri", default=None, metavar="URI",
                    help="Hypervisor of the libvirt provider: qemu:///system (this machine, "
                         "the default) or qemu+ssh://USER@HOST[:PORT]/system[?keyfile=PATH&"
                         "known_hosts=PATH] for a remote host")
    group.addoption("--lab-hosts", action="append", default=None, metavar="NAME=URI",
                    help="A hypervisor host topologies' nodes without host: are spread over by "
                         "memory: NAME=local or NAME=qemu+ssh://USER@HOST[:PORT]/system?..."
                         " (repeat for each host)")
    group.addoption("--lab-parallel", default=None, metavar="N",
                    help="How many VMs of a topology or lab.vms() may boot at once (default: "
                         "the host's cores, or fewer if free memory holds fewer)")
    group.addoption("--lab-boot-timeout", default=None, type=float,
                    help="Seconds a VM may take to answer SSH (default: 90)")
    group.addoption("--lab-snapshot-on-failure", action="store_true", default=False,
                    help="Snapshot every machine of a failing test and keep the lab's state "
                         "for post-mortem (machines stopped, restorable with vboxlab snapshots)")
    group.addoption("--lab-snapshot-every", default=None, type=int, metavar="N",
                    help="Snapshot the machines after every N tests")
    group.addoption("--lab-snapshot-interval", default=None, type=float, metavar="SECONDS",
                    help="Snapshot the machines every SECONDS while a test runs")
    group.addoption("--lab-timeline-dir", default=None,
                    help="Where snapshot timelines (SVG) go (default: beside --junitxml, "
                         "else ./reports)")
    add_scan_options(group)
    add_traffic_options(group)
    group.addoption("--lab-report", default=None, metavar="DIR",
                    help="Write a self-contained HTML lab report (index.html), report.json and "
                         "lab-manifest.json into DIR")
    group.addoption("--lab-seed-file", default=None, metavar="FILE",
                    help="JSON of test id -> seed for network tests whose lab marker gives none "
                         "(vboxlab report reproduce writes it)")
    parser.addini("lab_provider", "Default for --lab-provider", default="qemu")
    parser.addini("lab_capture_limit", "Default for --lab-capture-limit", default="64MB")
    parser.addini("lab_capture_window", "Default for --lab-capture-window", default="")
    parser.addini("lab_ids", "Default for --lab-ids", default="offline")
    parser.addini("lab_template", "Default for --lab-template", default="tiny")
    parser.addini("lab_parallel", "Default for --lab-parallel (empty: the host's cores)",
                  default="")
    parser.addini("lab_accel", "Default for --lab-accel", default="auto")
    parser.addini("lab_channel", "Default for --lab-channel", default="auto")
    parser.addini("lab_libvirt_uri", "Default for --lab-libvirt-uri", default="")
    parser.addini("lab_hosts", "Default for --lab-hosts (one NAME=URI per line)",
                  type="linelist", default=[])
    parser.addini("lab_snapshot_on_failure", "Default for --lab-snapshot-on-failure",
                  type="bool", default=False)
    parser.addini("lab_snapshot_every", "Default for --lab-snapshot-every", default="0")
    parser.addini("lab_snapshot_interval", "Default for --lab-snapshot-interval", default="0")


def add_scan_options(group: pytest.OptionGroup) -> None:
    """Where the ``scan`` fixture's security data comes from and where its results go."""
    group.addoption("--lab-advisories", default=None, metavar="PATH",
                    help="OSV records (a folder or zip of .json, ecosystem Debian:12) for "
                         "vulnerability scans, checked against the OSV schema")
    group.addoption("--lab-debsecan", default=None, metavar="FILE",
                    help="A debsecan feed (as debsecan downloads it from the Debian security "
                         "tracker) for vulnerability scans")
    group.addoption("--lab-security-suite", default="bookworm-security", metavar="SUITE",
                    help="The Debian security suite whose apt lists mark packages behind a "
                         "security update (default: bookworm-security; 'none' to skip)")
    group.addoption("--lab-allowlist", default=None, metavar="FILE",
                    help="YAML list of accepted findings (id/package, reason, expires)")
    group.addoption("--lab-rules", action="append", default=[], metavar="DIR",
                    help="A folder of YARA rules to add to the shipped ones (repeatable)")
    group.addoption("--lab-signatures", action="append", default=[], metavar="DIR",
                    help="A folder of ClamAV signature files to add (repeatable)")
    group.addoption("--lab-profiles", action="append", default=[], metavar="DIR",
                    help="A folder of compliance profiles, searched before the shipped ones")
    group.addoption("--lab-compliance-as-tests", action="store_true", default=False,
                    help="Run each test marked compliance(profile) once per rule of the "
                         "profile, so JUnit and Allure show a line per rule")
    group.addoption("--lab-scan-dir", default=None, metavar="DIR",
                    help="Where each test's scan results go as JSON and JUnit XML (default: "
                         "scans/ beside --junitxml, else ./reports/scans)")


def add_traffic_options(group: pytest.OptionGroup) -> None:
    """Capture rings of the network fixture and the IDS's rules."""
    group.addoption("--lab-capture-limit", default=None, metavar="SIZE",
                    help="Keep at most SIZE of capture per link direction (the newest; "
                         "e.g. 64MB, 0 for no limit; default: 64MB)")
    group.addoption("--lab-capture-window", default=None, metavar="DURATION",
                    help="Keep only the last DURATION of capture per link direction "
                         "(e.g. 600s; default: no time limit)")
    group.addoption("--lab-ids", default=None, choices=["offline", "live"],
                    help="When the IDS reads a test's traffic: offline (after the test, from "
                         "the captures; default) or live (Suricata per link while it runs)")
    group.addoption("--lab-ids-rules", action="append", default=[], metavar="PATH",
                    help="Suricata .rules files or folders to add to the shipped ones "
                         "(repeatable)")


def add_markers(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: the test boots virtual machines (added to tests using lab or vm)")
    config.addinivalue_line("markers", "root: the test needs root on the host")
    config.addinivalue_line(
        "markers", "lab(topology, seed): the topology file the network fixture builds for the "
        "test, and the seed of its links' randomness")
    config.addinivalue_line(
        "markers", "compliance(profile): with --lab-compliance-as-tests the test runs once per "
        "rule of the profile, and scan.compliance() in it checks that rule")
    config.addinivalue_line(
        "markers", "ids(rules, expect, forbid): after the test, Suricata over the network's "
        "captures; unexpected alerts (forbid='any' or sids) or missing expected ones fail it")
    config.addinivalue_line(
        "markers", "fresh_vm: the vm fixture boots a machine for this test alone instead of "
        "rolling back the shared one")


def option(config: pytest.Config, name: str) -> str:
    """``--lab-NAME`` if given, else the ``lab_NAME`` ini key."""
    value = config.getoption(f"--lab-{name}")
    return str(value) if value is not None else str(config.getini(f"lab_{name}"))


def worker_id(config: pytest.Config) -> str | None:
    """The pytest-xdist worker id (``gw0``...), or None outside xdist."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


class RunState:
    """What the plugin tracks across one session, with the settings read once."""

    def __init__(self, config: pytest.Config) -> None:
        self.on_failure = bool(config.getoption("--lab-snapshot-on-failure") or
                               config.getini("lab_snapshot_on_failure"))
        self.every = int(config.getoption("--lab-snapshot-every") or
                         config.getini("lab_snapshot_every") or 0)
        self.interval = float(config.getoption("--lab-snapshot-interval") or
                              config.getini("lab_snapshot_interval") or 0)
        self.tests_done = 0
        self.lab: Lab | None = None
        self.shared: SharedVm | None = None
        self.failure_snapshots: list[str] = []
        self.timelines: list[Path] = []
        self.kept: list[str] = []
        xml = config.getoption("--junitxml", None) if config.pluginmanager.has_plugin(
            "junitxml") else None
        chosen = config.getoption("--lab-timeline-dir")
        self.timeline_dir = Path(chosen) if chosen else (
            Path(xml).resolve().parent if xml else config.rootpath / "reports")
        self.capture_ring = capture_ring(config)
        from vboxlab.pytest.labreport import LabReport, read_seed_file, report_folder

        self.lab_report = LabReport(config, report_folder(config), worker_id(config))
        seeds = config.getoption("--lab-seed-file")
        self.seeds: dict[str, int] = read_seed_file(Path(seeds)) if seeds else {}
        self.report_page: Path | None = None
        scans = config.getoption("--lab-scan-dir")
        self.scan_dir = Path(scans) if scans else (
            Path(xml).resolve().parent / "scans" if xml else config.rootpath / "reports" / "scans")


def capture_ring(config: pytest.Config) -> CaptureRing | None:
    """The ring every link capture of the network fixture gets (--lab-capture-*)."""
    from vboxlab.net.units import parse_duration, parse_size

    values: list[float | None] = []
    for name, parse in (("limit", parse_size), ("window", parse_duration)):
        text = str(config.getoption(f"--lab-capture-{name}") or
                   config.getini(f"lab_capture_{name}")).strip()
        try:
            values.append(parse(text) if text not in ("", "0") else None)
        except ValueError as exc:
            raise pytest.UsageError(f"--lab-capture-{name} (or ini lab_capture_{name}) "
                                    f"{text!r}: {exc}") from None
    try:
        ring = CaptureRing(int(values[0]) if values[0] else None, values[1])
    except ConfigError as exc:
        raise pytest.UsageError(f"--lab-capture-limit/--lab-capture-window: {exc}") from None
    return ring if ring.limited else None


STATE_KEY = pytest.StashKey[RunState]()


def state_of(config: pytest.Config) -> RunState:
    return config.stash[STATE_KEY]
