"""The repository's own pytest set-up (the vboxlab plugin itself loads through its entry point).

Every run gets a state folder of its own, and at the end the run fails if any
lab folder, QEMU process, netns holder, tap device or test loop device is left: nothing
may leak.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from vboxlab.leftovers import describe, find_leftovers
from vboxlab.paths import cache_dir

pytest_plugins = ["pytester"]


@pytest.hookimpl(tryfirst=True)  # before pytest's tmpdir plugin reads --basetemp
def pytest_configure(config: pytest.Config) -> None:
    # pytester gives inner runs a HOME of their own; they must still find the built templates
    os.environ.setdefault("VBOXLAB_CACHE", str(cache_dir()))
    if not hasattr(config, "workerinput") and "VBOXLAB_TEST_STATE" not in os.environ:
        folder = tempfile.mkdtemp(prefix="vbl-", dir="/tmp")
        os.environ["VBOXLAB_TEST_STATE"] = folder
        os.environ["VBOXLAB_STATE_DIR"] = folder
        config.stash[_OWNER] = folder
        if _xdist_workers(config) and not config.option.basetemp:
            # workers' temporary folders are BASETEMP/popen-gwN: under pytest's default
            # (/tmp/pytest-of-USER/pytest-N/popen-gwN/) the sockets of labs that tests make in
            # their tmp_path would pass the 107-byte limit of UNIX socket paths
            config.option.basetemp = tempfile.mkdtemp(prefix="t", dir="/tmp")
            config.stash[_BASETEMP] = config.option.basetemp


_OWNER = pytest.StashKey[str]()
_BASETEMP = pytest.StashKey[str]()


def _xdist_workers(config: pytest.Config) -> bool:
    """Whether this run hands its tests to pytest-xdist workers."""
    try:
        workers = config.getoption("numprocesses")
    except ValueError:  # pytest-xdist is not installed
        return False
    return bool(workers) and config.getoption("dist", "no") != "no"


def _leftovers(folder: str, basetemp: str | None) -> list[str]:
    """What the run's labs left (vboxlab.leftovers), plus mounts and loop devices of tests
    (in pytest's temporary folders: the default ones, or ``basetemp``)."""

    def of_tests(path: str) -> bool:
        return "/pytest-of-" in path or (basetemp is not None and
                                         path.startswith(basetemp.rstrip("/") + "/"))

    found = describe(find_leftovers(Path(folder)))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if of_tests(point):
            found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        text = backing.read_text().strip()
        if of_tests(text):
            found.append(f"loop device /dev/{backing.parent.parent.name} over {text}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = session.config.stash.get(_OWNER, None)
    if folder is None:
        return
    basetemp = session.config.stash.get(_BASETEMP, None)
    deadline = time.monotonic() + 10
    left = _leftovers(folder, basetemp)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers(folder, basetemp)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if reporter is not None:
            reporter.write_sep("!", "vboxlab leak check failed")
            for item in left:
                reporter.write_line(f"left behind: {item}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
    if basetemp is not None:  # the default one keeps pytest's last three runs; this one:
        if exitstatus == 0 and not left:  # kept only when something failed
            shutil.rmtree(basetemp, ignore_errors=True)
        elif reporter is not None:
            reporter.write_line(f"the tests' temporary folders are kept in {basetemp}")
