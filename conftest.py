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


def pytest_configure(config: pytest.Config) -> None:
    # pytester gives inner runs a HOME of their own; they must still find the built templates
    os.environ.setdefault("VBOXLAB_CACHE", str(cache_dir()))
    if not hasattr(config, "workerinput") and "VBOXLAB_TEST_STATE" not in os.environ:
        folder = tempfile.mkdtemp(prefix="vbl-", dir="/tmp")
        os.environ["VBOXLAB_TEST_STATE"] = folder
        os.environ["VBOXLAB_STATE_DIR"] = folder
        config.stash[_OWNER] = folder


_OWNER = pytest.StashKey[str]()


def _leftovers(folder: str) -> list[str]:
    """What the run's labs left (vboxlab.leftovers), plus mounts and loop devices of tests."""
    found = describe(find_leftovers(Path(folder)))
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if "/pytest-of-" in point:
            found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        text = backing.read_text().strip()
        if "/pytest-of-" in text:
            found.append(f"loop device /dev/{backing.parent.parent.name} over {text}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    folder = session.config.stash.get(_OWNER, None)
    if folder is None:
        return
    deadline = time.monotonic() + 10
    left = _leftovers(folder)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = _leftovers(folder)
    if left:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("!", "vboxlab leak check failed")
            for item in left:
                reporter.write_line(f"left behind: {item}")
    else:
        shutil.rmtree(folder, ignore_errors=True)
