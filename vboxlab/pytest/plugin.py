"""The vboxlab pytest plugin (entry point ``pytest11``): the hooks, wired to one module per job.

Options and markers live in :mod:`.options`, fixtures in :mod:`.fixtures`,
rollback in :mod:`.rollback`, snapshot schedules in :mod:`.schedules`, report
sections and timelines in :mod:`.reports`, and the skip-or-fail policy tests
use in :mod:`.policy`. Each hook here only decides what runs when; every
step of a test's teardown runs even if an earlier one fails.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from vboxlab.errors import HostError, VboxlabError
from vboxlab.lab import Lab
from vboxlab.providers import load_provider
from vboxlab.pytest import ids as ids_checks
from vboxlab.pytest import options, reports, rollback, schedules
from vboxlab.pytest.fixtures import _vboxlab_shared_vm, boot_media, lab, network, vm
from vboxlab.pytest.ids import ids
from vboxlab.pytest.options import STATE_KEY, RunState, state_of
from vboxlab.pytest.policy import missing_capability, require_root
from vboxlab.pytest.scan import (
    _vboxlab_compliance_rule,
    _vboxlab_scan,
    compliance_rules,
    report_sections,
    scan,
)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from vboxlab import hookspecs

    pluginmanager.add_hookspecs(hookspecs)


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    options.add_markers(config)
    config.stash[STATE_KEY] = RunState(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    compliance_rules(metafunc)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if options.VM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.vm)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root"):
        require_root()
    if item.get_closest_marker("vm"):
        name = options.option(item.config, "provider")
        try:
            load_provider(name)  # finds its tools (QEMU, ...) or says which are missing
        except HostError as exc:
            missing_capability(f"provider {name} cannot run here: {exc}")


def _lab_of(item: pytest.Item) -> Lab | None:
    """The session's lab, if this test uses it and it is open."""
    if not options.VM_FIXTURES & set(getattr(item, "fixturenames", ())):
        return None
    the_lab = state_of(item.config).lab
    return the_lab if the_lab is not None and not the_lab.closed else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    the_lab = _lab_of(item)
    worker: schedules.IntervalSnapshots | None = None
    if the_lab is not None:
        rollback.take_baselines(the_lab, item.nodeid)
        interval = state_of(item.config).interval
        if interval > 0:
            worker = schedules.IntervalSnapshots(the_lab, item.nodeid, interval)
            worker.start()
    try:
        result = yield
    except BaseException as exc:
        reports.check_fabric(item, the_lab, exc)
        ids_checks.alerts_after_failure(item, the_lab.current_network if the_lab else None)
        raise
    else:
        reports.check_fabric(item, the_lab, None)
        ids_checks.check_marker(item, the_lab.current_network if the_lab is not None else None)
        return result
    finally:
        if worker is not None:
            errors = worker.finish()
            if errors:
                item.add_report_section("call", "vboxlab interval snapshots", "\n".join(errors))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                         pytest.TestReport]:
    report = yield
    if report.when == "call":
        report.sections.extend(report_sections(item))
        report.sections.extend(ids_checks.save_reports(item))
    the_lab = _lab_of(item)
    state = state_of(item.config)
    try:
        state.lab_report.on_report(item, report, the_lab)
    except (VboxlabError, OSError) as exc:  # the report must never break the test run
        report.sections.append(("vboxlab lab report", f"could not gather this test: {exc}"))
    if the_lab is None:
        return report
    if report.when == "call" or (report.when == "setup" and report.failed):
        for machine in list(the_lab):
            machine.snapshots.set_outcome(item.nodeid, report.outcome)
    if report.failed:
        if state.on_failure and report.when == "call":
            for owner, name, error in schedules.failure_snapshots(the_lab, item.nodeid):
                title = f"vboxlab failure snapshot of {owner}"
                if error is not None:
                    report.sections.append((title, f"could not take it: {error}"))
                    continue
                state.failure_snapshots.append(f"{owner}:{name}")
                report.sections.append((
                    title, f"state kept as snapshot {name!r}; after the run: vboxlab snapshots "
                           f"restore {the_lab.id} {owner} {name} --lab-dir {the_lab.base}"))
        reports.failure_sections(item, the_lab, state, report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item,
                            nextitem: pytest.Item | None) -> Generator[None, None, None]:
    the_lab = _lab_of(item)
    errors: list[VboxlabError] = []
    if the_lab is not None:
        state = state_of(item.config)
        state.tests_done += 1
        if state.every and state.tests_done % state.every == 0:
            try:
                schedules.every_n(the_lab, state.tests_done, item.nodeid)
            except VboxlabError as exc:  # never skips the rollback below
                errors.append(exc)
        if not (nextitem is None and the_lab.keep):  # --lab-keep keeps the last test's state
            try:
                rollback.roll_back(the_lab, state.shared)
            except VboxlabError as exc:
                errors.append(exc)
        for machine in list(the_lab):
            machine.current_test = None
    result = yield
    if errors:
        raise errors[0]
    return result


def pytest_sessionfinish(session: pytest.Session) -> None:
    state = session.config.stash.get(STATE_KEY, None)
    if state is not None:
        state.report_page = state.lab_report.write()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(STATE_KEY, None)
    if state is not None:
        reports.terminal_summary(terminalreporter, state)


__all__ = ["_vboxlab_compliance_rule", "_vboxlab_scan", "_vboxlab_shared_vm", "boot_media",
           "ids", "lab", "network", "scan", "vm"]
