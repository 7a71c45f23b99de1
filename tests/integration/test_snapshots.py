"""Snapshots on real QEMU guests: state, branching, bad input and faults."""

import os
import subprocess
import threading
import time

import pytest

from vboxlab.errors import ConfigError, MachineDied, ProviderError
from vboxlab.lab import Lab
from vboxlab.providers import qmp as qmp_module

from .helpers import qemu_pids


@pytest.fixture
def machine(tmp_path):
    with Lab(base=tmp_path / "labs") as lab:
        yield lab.vm("snap")
    assert qemu_pids(str(tmp_path / "labs")) == []


def test_restore_brings_back_disk_memory_and_processes(machine):
    machine.succeed("echo v1 > /data/file && echo m1 > /tmp/mem && sync")
    node = machine.snapshot("base")
    assert node.size > 1_000_000 and node.parent is None
    machine.succeed("echo v2 > /data/file && rm /tmp/mem && (sleep 600 >/dev/null 2>&1 &)")
    assert machine.succeed("pidof sleep").strip()
    started = time.monotonic()
    machine.restore("base")
    assert time.monotonic() - started < 10
    assert machine.succeed("cat /data/file /tmp/mem") == "v1\nm1\n"
    machine.fail("pidof sleep")


def test_branches_and_the_tree(machine):
    machine.snapshot("A")
    machine.succeed("touch /tmp/b")
    machine.snapshot("B")
    machine.restore("A")
    machine.fail("test -e /tmp/b")
    machine.succeed("touch /tmp/c")
    machine.snapshot("C")
    tree = machine.snapshots
    assert [c.name for c in tree.children("A")] == ["B", "C"]
    assert tree.current == "C"
    machine.restore("B")
    machine.succeed("test -e /tmp/b")
    machine.fail("test -e /tmp/c")
    assert "├── B *" in tree.render()


def test_restoring_an_unknown_snapshot_lists_those_that_exist(machine):
    machine.snapshot("one")
    with pytest.raises(ConfigError, match="no snapshot 'two'; snapshots: one"):
        machine.restore("two")
    assert machine.succeed("echo fine") == "fine\n"


def test_deleting_a_snapshot_with_children_needs_subtree(machine):
    machine.snapshot("root")
    machine.snapshot("child")
    with pytest.raises(ConfigError, match=r"has children \(child\).*subtree=True"):
        machine.delete_snapshot("root")
    assert machine.delete_snapshot("root", subtree=True) == ["child", "root"]
    assert len(machine.snapshots) == 0
    assert machine.handle.snapshot_list() == []


def test_duplicate_and_invalid_names_are_refused(machine):
    machine.snapshot("same")
    with pytest.raises(ConfigError, match="already has a snapshot 'same'"):
        machine.snapshot("same")
    with pytest.raises(ConfigError, match="invalid snapshot name"):
        machine.snapshot("no spaces")
    assert machine.snapshot().name == "snap-1"


def test_snapshot_while_a_command_runs(machine):
    results = []
    worker = threading.Thread(
        target=lambda: results.append(machine.succeed("sleep 2; echo finished")))
    worker.start()
    time.sleep(0.5)
    machine.snapshot("during")
    worker.join(30)
    assert results == ["finished\n"]
    machine.restore("during")
    assert machine.succeed("echo after restore") == "after restore\n"


def test_start_from_a_snapshot_after_the_vm_was_killed(machine):
    machine.succeed("echo kept > /tmp/mem")
    machine.snapshot("saved")
    machine.kill()
    started = time.monotonic()
    machine.restore("saved")  # QEMU resumes from the snapshot instead of booting
    assert time.monotonic() - started < 5
    assert machine.succeed("cat /tmp/mem") == "kept\n"


def kill_qemu_after(monkeypatch, machine, qmp_command):
    """SIGKILL the VM's QEMU right after it accepted ``qmp_command`` (a job has started)."""
    real_cmd = qmp_module.QmpConnection.cmd

    def killing_cmd(self, command, arguments=None, timeout=None):
        result = real_cmd(self, command, arguments, timeout)
        if command == qmp_command:
            os.kill(machine.handle._proc.pid, 9)
        return result

    monkeypatch.setattr(qmp_module.QmpConnection, "cmd", killing_cmd)


def test_qemu_killed_during_a_save_keeps_tree_and_disk_usable(machine, monkeypatch):
    machine.snapshot("good")
    kill_qemu_after(monkeypatch, machine, "snapshot-save")
    with pytest.raises(MachineDied):
        machine.snapshot("doomed")
    monkeypatch.undo()
    assert [n.name for n in machine.snapshots] == ["good"]
    machine.restore("good")
    assert machine.succeed("echo alive") == "alive\n"
    machine.sync_snapshots()
    assert [n.name for n in machine.snapshots] == ["good"]


def test_qemu_killed_during_a_restore_leaves_the_tree_as_it_was(machine, monkeypatch):
    machine.snapshot("a")
    machine.snapshot("b")
    kill_qemu_after(monkeypatch, machine, "snapshot-load")
    with pytest.raises(MachineDied):
        machine.restore("a")
    monkeypatch.undo()
    assert machine.snapshots.current == "b"
    machine.restore("a")
    assert machine.snapshots.current == "a"


@pytest.mark.root
def test_a_full_disk_during_a_save_is_a_clear_error(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mount)],
                   check=True)
    try:
        with Lab(base=mount) as lab:
            machine = lab.vm("full")
            with pytest.raises(ProviderError, match=r"free space .* the disk is full"):
                machine.snapshot("big")
            assert len(machine.snapshots) == 0
            assert machine.succeed("echo still running") == "still running\n"
            assert machine.handle.snapshot_list() == []
        assert qemu_pids(str(mount)) == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
