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
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if "qemu-system" in argv and folder in argv:
                found.append(f"qemu process {entry.name}")
            try:
                cwd = str((entry / "cwd").readlink())
            except OSError:
                continue
            if cwd.startswith(folder + "/") and argv.startswith(("unshare", "sleep")):
                found.append(f"netns holder process {entry.name} in {cwd}")
    found += [f"tap device {p.name}" for p in Path("/sys/class/net").glob("vl*")]
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if "/pytest-of-" in point or point.startswith(folder):
            found.append(f"mount {point}")
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        text = backing.read_text().strip()
        if "/pytest-of-" in text or text.startswith(folder):
            found.append(f"loop device /dev/{backing.parent.parent.name} over {text}")
    if Path(folder).is_dir():
        found += [f"lab folder {p}" for p in Path(folder).iterdir() if p.is_dir()]
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
