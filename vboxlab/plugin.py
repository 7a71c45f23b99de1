"""The pytest plugin: options, markers, the ``lab`` and ``vm`` fixtures, report attachments.

Rollback: the ``vm`` fixture boots one machine per session (per xdist worker),
snapshots it as ``clean`` and restores that snapshot after every test that
used it. Machines made with ``lab.vm(..., rollback=True)`` get a baseline when
the first test using the lab starts and are restored to it after every test.
Schedules add snapshots on failure, every N tests and every T seconds.
"""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
import threading
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from vboxlab.errors import ConfigError, VboxlabError
from vboxlab.lab import Lab, clean
from vboxlab.logs import tail
from vboxlab.machine import Machine
from vboxlab.net.fabric.control import FabricError
from vboxlab.net.network import Network
from vboxlab.net.topology import load_topology
from vboxlab.providers.base import MachineState
from vboxlab.report.timeline import render_svg
from vboxlab.snapshots import safe_name

LAB_KEY = pytest.StashKey[Lab]()
KEPT_KEY = pytest.StashKey[list[str]]()
STATE_KEY = pytest.StashKey["RunState"]()
_VM_FIXTURES = {"lab", "vm", "network", "boot_media"}
CLEAN = "clean"


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


class RunState:
    """What the plugin tracks across one session."""

    def __init__(self, config: pytest.Config) -> None:
        self.on_failure = bool(config.getoption("--lab-snapshot-on-failure") or
                               config.getini("lab_snapshot_on_failure"))
        self.every = int(config.getoption("--lab-snapshot-every") or
                         config.getini("lab_snapshot_every") or 0)
        self.interval = float(config.getoption("--lab-snapshot-interval") or
                              config.getini("lab_snapshot_interval") or 0)
        self.tests_done = 0
        self.shared: SharedVm | None = None
        self.failure_snapshots: list[str] = []
        self.timelines: list[Path] = []
        xml = config.getoption("--junitxml", None) if config.pluginmanager.has_plugin(
            "junitxml") else None
        chosen = config.getoption("--lab-timeline-dir")
        self.timeline_dir = Path(chosen) if chosen else (
            Path(xml).resolve().parent if xml else config.rootpath / "reports")


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from vboxlab import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vboxlab", "vboxlab: labs of real machines")
    group.addoption("--lab-provider", default=None,
                    help="Provider that runs the lab's machines (default: qemu)")
    group.addoption("--lab-template", default=None,
                    help="Template of the vm fixture and of lab.vm() without template= "
                         "(default: tiny)")
    group.addoption("--lab-dir", default=None,
                    help="Folder that holds one state folder per lab (default: "
                         "$XDG_RUNTIME_DIR/vboxlab or /tmp/vboxlab-UID)")
    group.addoption("--lab-keep", action="store_true", default=False,
                    help="Keep machines and state after the run and print how to reach them")
    group.addoption("--lab-accel", default=None, choices=["auto", "kvm", "tcg"],
                    help="QEMU accelerator; auto uses KVM only if a probe boots a guest with it")
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
    parser.addini("lab_provider", "Default for --lab-provider", default="qemu")
    parser.addini("lab_template", "Default for --lab-template", default="tiny")
    parser.addini("lab_accel", "Default for --lab-accel", default="auto")
    parser.addini("lab_snapshot_on_failure", "Default for --lab-snapshot-on-failure",
                  type="bool", default=False)
    parser.addini("lab_snapshot_every", "Default for --lab-snapshot-every", default="0")
    parser.addini("lab_snapshot_interval", "Default for --lab-snapshot-interval", default="0")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: the test boots virtual machines (added to tests using lab or vm)")
    config.addinivalue_line("markers", "root: the test needs root on the host")
    config.addinivalue_line(
        "markers", "lab(topology): the topology file the network fixture builds for the test")
    config.addinivalue_line(
        "markers", "fresh_vm: the vm fixture boots a machine for this test alone instead of "
        "rolling back the shared one")
    config.stash[KEPT_KEY] = []
    config.stash[STATE_KEY] = RunState(config)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)


def missing_capability(reason: str) -> NoReturn:
    """Skip outside CI; under CI a missing capability is a failure."""
    if in_ci():
        pytest.fail(f"missing capability under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(tool: str, package: str) -> str:
    """The path of a host tool a test needs; skips outside CI and fails under CI if missing."""
    path = shutil.which(tool)
    if path is None:
        missing_capability(f"{tool} is not installed (apt-get install {package})")
    return path


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"--lab-{name}")
    return str(value) if value is not None else str(config.getini(f"lab_{name}"))


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


def _lab_of(item: pytest.Item) -> Lab | None:
    if not _VM_FIXTURES & set(getattr(item, "fixturenames", ())):
        return None
    the_lab = item.config.stash.get(LAB_KEY, None)
    return the_lab if the_lab is not None and not the_lab.closed else None


def _running(the_lab: Lab) -> list[Machine]:
    """The lab's running machines that can be snapshotted (schedules skip netns hosts)."""
    return [m for m in list(the_lab)
            if m.handle.can_snapshot and m.state is MachineState.RUNNING]


# -- fixtures ------------------------------------------------------------------
@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The session's lab: ``lab.vm("name", template=..., memory=..., cpus=...)``."""
    config = request.config
    base = config.getoption("--lab-dir")
    base_path = Path(base) if base else None
    clean(base_path)  # labs of runs that died; never a live run's
    boot_timeout = config.getoption("--lab-boot-timeout") or 90.0
    the_lab = Lab(base=base_path, provider=_option(config, "provider"),
                  template=_option(config, "template"), keep=config.getoption("--lab-keep"),
                  worker=_worker_id(config), accel=_option(config, "accel"),
                  boot_timeout=boot_timeout)
    config.stash[LAB_KEY] = the_lab
    atexit.register(the_lab.close)
    hook = config.hook
    the_lab.on_machine_ready.append(
        lambda machine: hook.pytest_vboxlab_machine_ready(machine=machine, lab=the_lab))
    hook.pytest_vboxlab_lab_created(lab=the_lab, config=config)
    state = config.stash[STATE_KEY]
    try:
        yield the_lab
    finally:
        _write_timelines(the_lab, state)
        if state.failure_snapshots and not the_lab.keep:
            the_lab.keep_stopped = True
        the_lab.close()
        atexit.unregister(the_lab.close)
        if the_lab.keep or the_lab.keep_stopped:
            config.stash[KEPT_KEY].append(the_lab.access_text())


class SharedVm:
    """The session's rollback machine behind the ``vm`` fixture."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.machine: Machine | None = None
        self.dirty = False

    def get(self) -> Machine:
        machine = self.machine
        if machine is None or machine.name not in self.lab.machines:
            if "vm" in self.lab.machines:
                self.lab.remove_vm("vm")
            machine = self.lab.vm("vm", rollback=True)
            machine.snapshot(CLEAN, kind="clean")
            machine.baseline = CLEAN
            self.machine = machine
        elif machine.state is not MachineState.RUNNING:
            machine.restore(CLEAN)  # QEMU resumes from the snapshot: no boot
        self.dirty = True
        return machine

    def discard(self) -> None:
        """Give up on this machine (it could not be restored); the next test boots anew."""
        if self.machine is not None and self.machine.name in self.lab.machines:
            self.lab.remove_vm(self.machine.name)
        self.machine = None


@pytest.fixture(scope="session")
def _vboxlab_shared_vm(lab: Lab, request: pytest.FixtureRequest) -> SharedVm:
    shared = SharedVm(lab)
    request.config.stash[STATE_KEY].shared = shared
    return shared


_vm_numbers = itertools.count(1)


@pytest.fixture
def vm(request: pytest.FixtureRequest, lab: Lab) -> Generator[Machine, None, None]:
    """A machine in a clean state for this test.

    One machine per session is restored to its ``clean`` snapshot after each
    test; ``@pytest.mark.fresh_vm`` boots a machine for the test alone.
    """
    if request.node.get_closest_marker("fresh_vm"):
        name = f"fresh{next(_vm_numbers)}"
        machine = lab.vm(name)
        machine.current_test = request.node.nodeid
        yield machine
        if not lab.keep:
            lab.remove_vm(name)
        return
    shared: SharedVm = request.getfixturevalue("_vboxlab_shared_vm")
    machine = shared.get()
    machine.current_test = request.node.nodeid
    yield machine


class BootMediaFixture:
    """The ``boot_media`` fixture: ``boot_media(tree, append=..., way=...)`` -> a booted Machine."""

    def __init__(self, the_lab: Lab) -> None:
        self.lab = the_lab
        self.names: list[str] = []

    def __call__(self, tree: str | Path | None = None, *, append: str = "",
                 way: str = "bios-cdrom", device: str | Path | None = None,
                 allow_fixed: bool = False, name: str | None = None,
                 memory: int | None = None, template: str | None = None) -> Machine:
        from vboxlab.media.boot import boot_from_media
        from vboxlab.media.usb import Overrides

        name = name or f"media{next(_media_numbers)}"
        machine = boot_from_media(
            self.lab, name, Path(tree) if tree is not None else None, append=append, way=way,
            device=Path(device) if device is not None else None,
            overrides=Overrides(allow_fixed=allow_fixed), memory=memory, template=template)
        self.names.append(name)
        return machine

    def close(self) -> None:
        for name in self.names:
            if name in self.lab.machines and not self.lab.keep:
                self.lab.remove_vm(name)


_media_numbers = itertools.count(1)


@pytest.fixture
def boot_media(lab: Lab) -> Iterator[BootMediaFixture]:
    """Build a folder into a bootable ISO with the template's kernel, boot it, get the Machine.

    ``boot_media(tree, append="lab.role=x", way="uefi-cdrom")``; ways: bios-cdrom,
    bios-usb, uefi-cdrom, uefi-usb (a USB way with ``device=`` writes the image to
    that block device first). The machines go away after the test.
    """
    media = BootMediaFixture(lab)
    try:
        yield media
    finally:
        media.close()


@pytest.fixture
def network(request: pytest.FixtureRequest, lab: Lab) -> Generator[Network, None, None]:
    """The topology of ``@pytest.mark.lab(topology="topologies/x.yaml")``, built and running.

    Its machines are ``network.node(name)`` (or ``lab.node(name)``), its links
    ``lab.link(a, b)``; everything is torn down after the test.
    """
    marker = request.node.get_closest_marker("lab")
    topology = marker.kwargs.get("topology") if marker is not None else None
    if topology is None:
        raise ConfigError("the network fixture needs a topology: mark the test with "
                          "@pytest.mark.lab(topology='topologies/NAME.yaml')")
    path = Path(topology)
    if not path.is_absolute():
        path = request.config.rootpath / path
    model = load_topology(path)
    if model.needs_root and os.geteuid() != 0:
        missing_capability(f"topology {path.name} has netns nodes, which need root")
    built = lab.network(model, seed=marker.kwargs.get("seed") if marker is not None else None)
    built.capture_all(lab.dir / "captures")  # attached to the report if the test fails
    try:
        yield built
    finally:
        if not lab.keep:
            lab.remove_network()


# -- the test protocol ---------------------------------------------------------
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        missing_capability("the test needs root on the host")
    if item.get_closest_marker("vm"):
        require_tool("qemu-system-x86_64", "qemu-system-x86")


class _IntervalSnapshots(threading.Thread):
    """Snapshots the lab's running machines every ``interval`` seconds during one test."""

    def __init__(self, the_lab: Lab, test: str, interval: float) -> None:
        super().__init__(name="vboxlab-interval-snapshots", daemon=True)
        self.lab = the_lab
        self.test = test
        self.interval = interval
        self.stopped = threading.Event()
        self.errors: list[str] = []

    def run(self) -> None:
        count = 0
        while not self.stopped.wait(self.interval):
            count += 1
            for machine in _running(self.lab):
                try:
                    machine.snapshot(f"{safe_name(self.test, 40)}-t{count}", kind="interval")
                except Exception as exc:  # reported with the test, never lost in a thread
                    self.errors.append(f"{machine.name}: {type(exc).__name__}: {exc}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    the_lab = _lab_of(item)
    worker: _IntervalSnapshots | None = None
    if the_lab is not None:
        for machine in list(the_lab):
            machine.current_test = item.nodeid
            if machine.rollback and machine.baseline is None and \
                    machine.state is MachineState.RUNNING:
                machine.current_test = None
                machine.snapshot(f"baseline-{machine.name}", kind="clean")
                machine.baseline = f"baseline-{machine.name}"
                machine.current_test = item.nodeid
        interval = item.config.stash[STATE_KEY].interval
        if interval > 0:
            worker = _IntervalSnapshots(the_lab, item.nodeid, interval)
            worker.start()
    try:
        result = yield
    except BaseException as exc:
        _check_fabric(item, the_lab, exc)
        raise
    else:
        _check_fabric(item, the_lab, None)
        return result
    finally:
        if worker is not None:
            worker.stopped.set()
            worker.join(timeout=120)
            if worker.errors:
                item.add_report_section("call", "vboxlab interval snapshots",
                                        "\n".join(worker.errors))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                         pytest.TestReport]:
    report = yield
    the_lab = _lab_of(item)
    if the_lab is None:
        return report
    state = item.config.stash[STATE_KEY]
    if report.when == "call" or (report.when == "setup" and report.failed):
        for machine in list(the_lab):
            machine.snapshots.set_outcome(item.nodeid, report.outcome)
    if report.failed:
        if state.on_failure and report.when == "call":
            for machine in _running(the_lab):
                name = f"failed-{safe_name(item.nodeid, 40)}"
                try:
                    if name not in machine.snapshots:
                        machine.snapshot(name, kind="failure")
                        machine.snapshots.set_outcome(item.nodeid, "failed")
                    state.failure_snapshots.append(f"{machine.name}:{name}")
                    report.sections.append((
                        f"vboxlab failure snapshot of {machine.name}",
                        f"state kept as snapshot {name!r}; after the run: vboxlab snapshots "
                        f"restore {the_lab.id} {machine.name} {name} --lab-dir {the_lab.base}"))
                except VboxlabError as exc:
                    report.sections.append((f"vboxlab failure snapshot of {machine.name}",
                                            f"could not take it: {exc}"))
        network = the_lab._network
        if network is not None and "network" in getattr(item, "fixturenames", ()):
            _attach_captures(network, the_lab, state, item, report)
        for machine in list(the_lab):
            text = tail(machine.console_log, 40)
            report.sections.append((f"vboxlab console of {machine.name}", text or "(empty)"))
        lab_log = the_lab.dir / "lab.log"
        if lab_log.is_file():
            report.sections.append(("vboxlab lab log", tail(lab_log, 40)))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    the_lab = _lab_of(item)
    if the_lab is not None:
        state = item.config.stash[STATE_KEY]
        state.tests_done += 1
        if state.every and state.tests_done % state.every == 0:
            for machine in _running(the_lab):
                machine.snapshot(f"after-{state.tests_done}-{safe_name(item.nodeid, 36)}",
                                 kind="every-n")
        if not (nextitem is None and the_lab.keep):  # --lab-keep keeps the last test's state
            _roll_back(the_lab, state)
        for machine in list(the_lab):
            machine.current_test = None
    return (yield)


def _check_fabric(item: pytest.Item, the_lab: Lab | None, cause: BaseException | None) -> None:
    """Fail a test whose network fabric died while it ran, saying so (not just "ping failed")."""
    network = the_lab._network if the_lab is not None else None
    if network is None or "network" not in getattr(item, "fixturenames", ()):
        return
    try:
        network.fabric.check_alive()
    except VboxlabError as exc:
        raise FabricError(f"{exc} (it died while {item.nodeid} ran; every link of topology "
                          f"{network.topology.name} was cut from then on)") from cause


def _attach_captures(network: Network, the_lab: Lab, state: RunState, item: pytest.Item,
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
    for pcap in sorted((the_lab.dir / "captures").glob("*.pcap")):
        shutil.copyfile(pcap, target / pcap.name)
        copied.append(str(target / pcap.name))
    report.sections.append(("vboxlab packet captures", "\n".join(copied) or "(none)"))


def _roll_back(the_lab: Lab, state: RunState) -> None:
    shared = state.shared
    for machine in list(the_lab):
        if not machine.rollback or machine.baseline is None:
            continue
        if shared is not None and machine is shared.machine and not shared.dirty:
            continue
        try:
            machine.restore(machine.baseline)
        except VboxlabError as exc:
            the_lab.log.warning("%s: rollback to %s failed (%s); it will be booted anew",
                                machine.name, machine.baseline, exc)
            if shared is not None and machine is shared.machine:
                shared.discard()
            else:
                raise
    if shared is not None:
        shared.dirty = False


def _write_timelines(the_lab: Lab, state: RunState) -> None:
    for machine in list(the_lab):
        if len(machine.snapshots) == 0:
            continue
        state.timeline_dir.mkdir(parents=True, exist_ok=True)
        path = state.timeline_dir / f"vboxlab-timeline-{the_lab.id}-{machine.name}.svg"
        path.write_text(render_svg(machine.snapshots, machine.name, the_lab.id))
        state.timelines.append(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    config = terminalreporter.config
    for text in config.stash.get(KEPT_KEY, []):
        terminalreporter.write_sep("=", "vboxlab: kept labs")
        for line in text.splitlines():
            terminalreporter.write_line(line)
    state = config.stash.get(STATE_KEY, None)
    if state is not None and state.timelines:
        terminalreporter.write_sep("-", "vboxlab: snapshot timelines")
        for path in state.timelines:
            terminalreporter.write_line(str(path))


__all__ = ["lab", "vm"]
