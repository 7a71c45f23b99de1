"""Whole pytest sessions in subprocesses: kills, interrupts, failures, parallel runs, xdist."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vboxlab.labdirs import list_labs

from .helpers import qemu_pids, wait_for

SLOW_TEST = """
import pathlib, time

def test_hold(vm):
    assert vm.succeed("echo up") == "up\\n"
    pathlib.Path({ready!r}).write_text(vm.name)
    time.sleep(300)
"""


def start_session(folder, base, body, *args):
    (folder / "test_inner.py").write_text(textwrap.dedent(body))
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--lab-dir", str(base),
         "test_inner.py", *args],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_ready(session, ready):
    """Wait for the inner test to say its VM is up; show the inner output if it ended."""
    def done():
        if session.poll() is not None:
            raise AssertionError(f"inner run ended early:\n{session.stdout.read()}")
        return ready.exists()

    try:
        wait_for(done, 120, "the inner test to boot its VM")
    except AssertionError:
        if session.poll() is None:
            session.send_signal(signal.SIGINT)
            out = session.communicate(timeout=60)[0]
            raise AssertionError(f"inner run did not get ready; its output:\n{out}") from None
        raise


def vboxlab(*args):
    return subprocess.run([sys.executable, "-m", "vboxlab.cli", *args], capture_output=True,
                          text=True, check=False)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_run_leaves_no_qemu_and_clean_removes_its_lab(tmp_path, sig):
    base = tmp_path / "labs"
    ready = tmp_path / "ready"
    session = start_session(tmp_path, base, SLOW_TEST.format(ready=str(ready)))
    wait_ready(session, ready)
    assert qemu_pids(str(base)), "the inner run should have a VM running"
    session.send_signal(sig)
    session.communicate(timeout=30)
    wait_for(lambda: qemu_pids(str(base)) == [], 5, "the dead run's QEMU to die with it")
    [record] = list_labs(base)
    assert not record.owner_alive and record.stale
    result = vboxlab("clean", "--lab-dir", str(base))
    assert result.returncode == 0, result.stderr
    assert f"removed 1 lab(s): {record.id}" in result.stdout
    assert list(base.iterdir()) == []


def test_ctrl_c_tears_the_lab_down(tmp_path):
    base = tmp_path / "labs"
    ready = tmp_path / "ready"
    session = start_session(tmp_path, base, SLOW_TEST.format(ready=str(ready)))
    wait_ready(session, ready)
    session.send_signal(signal.SIGINT)
    out, _ = session.communicate(timeout=60)
    assert "KeyboardInterrupt" in out
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == [], out


def test_an_exception_in_a_fixture_leaves_nothing(tmp_path):
    base = tmp_path / "labs"
    session = start_session(tmp_path, base, """
        import pytest

        @pytest.fixture
        def broken(lab):
            lab.vm("doomed")
            raise RuntimeError("fixture broke after booting a VM")

        def test_uses_broken(broken):
            pass
    """)
    out, _ = session.communicate(timeout=180)
    assert session.returncode == 1, out
    assert "fixture broke after booting a VM" in out
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


def test_two_runs_at_once_do_not_collide(tmp_path):
    base = tmp_path / "labs"
    body = """
        def test_one(vm, lab):
            assert vm.succeed("hostname").strip() == vm.name
            port = vm.forward_port(22)
            assert port > 0
            print("LAB", lab.id, "PORT", port)
    """
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        runs.append(start_session(folder, base, body, "-s"))
    outputs = [run.communicate(timeout=240)[0] for run in runs]
    for run, out in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out
    labs = [line.split()[1] for out in outputs for line in out.splitlines()
            if line.startswith("LAB ")]
    ports = [line.split()[3] for out in outputs for line in out.splitlines()
             if line.startswith("LAB ")]
    assert len(set(labs)) == 2 and len(set(ports)) == 2
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


def test_xdist_workers_get_a_lab_each(tmp_path):
    base = tmp_path / "labs"
    session = start_session(tmp_path, base, """
        import pytest

        @pytest.mark.parametrize("n", [1, 2])
        def test_each(vm, lab, n):
            assert lab.id.endswith(("-gw0", "-gw1"))
            vm.succeed(f"echo {n} > /tmp/n")
    """, "-n", "2")
    out, _ = session.communicate(timeout=300)
    assert session.returncode == 0, out
    assert "2 passed" in out
    assert qemu_pids(str(base)) == []
    assert list(base.iterdir()) == []


def test_clean_never_touches_a_live_run(tmp_path):
    base = tmp_path / "labs"
    ready = tmp_path / "ready"
    session = start_session(tmp_path, base, SLOW_TEST.format(ready=str(ready)))
    try:
        wait_ready(session, ready)
        result = vboxlab("clean", "--lab-dir", str(base))
        assert "removed 0 lab(s)" in result.stdout
        assert qemu_pids(str(base))
        listing = vboxlab("labs", "--lab-dir", str(base)).stdout
        assert f"pid {session.pid} alive" in listing
    finally:
        session.send_signal(signal.SIGINT)
        session.communicate(timeout=60)
    assert list(base.iterdir()) == []


def test_next_run_cleans_what_a_killed_run_left(tmp_path):
    base = tmp_path / "labs"
    ready = tmp_path / "ready"
    session = start_session(tmp_path, base, SLOW_TEST.format(ready=str(ready)))
    wait_ready(session, ready)
    os.kill(session.pid, signal.SIGKILL)
    session.communicate(timeout=30)
    assert len(list(base.iterdir())) == 1
    time.sleep(0.5)
    follow_up = start_session(tmp_path, base, """
        def test_quick(lab):
            assert len(list(lab.base.iterdir())) == 1  # only this run's own lab
    """)
    out, _ = follow_up.communicate(timeout=120)
    assert follow_up.returncode == 0, out
    assert list(base.iterdir()) == []
