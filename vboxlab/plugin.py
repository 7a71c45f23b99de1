"""The pytest plugin: options, markers, the ``lab`` and ``vm`` fixtures, report attachments."""

from __future__ import annotations

import atexit
import itertools
import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from vboxlab.lab import Lab, clean
from vboxlab.logs import tail
from vboxlab.machine import Machine

LAB_KEY = pytest.StashKey[Lab]()
KEPT_KEY = pytest.StashKey[list[str]]()
_VM_FIXTURES = {"lab", "vm"}


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


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
    parser.addini("lab_provider", "Default for --lab-provider", default="qemu")
    parser.addini("lab_template", "Default for --lab-template", default="tiny")
    parser.addini("lab_accel", "Default for --lab-accel", default="auto")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "vm: the test boots virtual machines (added to tests using lab or vm)")
    config.addinivalue_line("markers", "root: the test needs root on the host")
    config.stash[KEPT_KEY] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and os.geteuid() != 0:
        _missing("the test needs root on the host")
    if item.get_closest_marker("vm") and shutil.which("qemu-system-x86_64") is None:
        _missing("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")


def _missing(reason: str) -> None:
    """Skip outside CI; under CI a missing capability is a failure."""
    if in_ci():
        pytest.fail(f"missing capability under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _option(config: pytest.Config, name: str) -> str:
    value = config.getoption(f"--lab-{name}")
    return str(value) if value is not None else str(config.getini(f"lab_{name}"))


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput["workerid"]) if workerinput else None


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
    try:
        yield the_lab
    finally:
        the_lab.close()
        atexit.unregister(the_lab.close)
        if the_lab.keep:
            config.stash[KEPT_KEY].append(the_lab.access_text())


_vm_numbers = itertools.count(1)


@pytest.fixture
def vm(lab: Lab) -> Generator[Machine, None, None]:
    """A booted machine of the default template, for this test only."""
    name = f"vm{next(_vm_numbers)}"
    machine = lab.vm(name)
    yield machine
    if not lab.keep:
        lab.remove_vm(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                         pytest.TestReport]:
    report = yield
    if report.failed and _VM_FIXTURES & set(getattr(item, "fixturenames", ())):
        the_lab = item.config.stash.get(LAB_KEY, None)
        if the_lab is not None and not the_lab._closed:
            for machine in the_lab:
                text = tail(machine.console_log, 40)
                report.sections.append((f"vboxlab console of {machine.name}",
                                        text or "(empty)"))
            lab_log = the_lab.dir / "lab.log"
            if lab_log.is_file():
                report.sections.append(("vboxlab lab log", tail(lab_log, 40)))
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for text in terminalreporter.config.stash.get(KEPT_KEY, []):
        terminalreporter.write_sep("=", "vboxlab: kept labs")
        for line in text.splitlines():
            terminalreporter.write_line(line)


__all__ = ["lab", "vm"]
