import json
import os
import subprocess
import sys
import time

import pytest

from vboxlab import procs
from vboxlab.errors import ConfigError
from vboxlab.lab import Lab, clean, list_labs

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def fake_lab(base, name, pid, kept=False):
    folder = base / name
    folder.mkdir(parents=True)
    (folder / "lease.json").write_text(json.dumps(
        {"id": name, "pid": pid, "start": procs.start_time(pid) if pid else None,
         "kept": kept}))
    (folder / "ledger.jsonl").write_text("")
    return folder


def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_clean_removes_only_labs_whose_owner_died(tmp_path):
    live = fake_lab(tmp_path, "live", os.getpid())
    dead = fake_lab(tmp_path, "dead", dead_pid())
    kept = fake_lab(tmp_path, "kept", dead_pid(), kept=True)
    assert clean(tmp_path) == ["dead"]
    assert live.exists() and kept.exists() and not dead.exists()
    assert clean(tmp_path, include_kept=True) == ["kept"]
    assert live.exists()


def test_clean_releases_the_processes_a_dead_lab_left(tmp_path):
    folder = fake_lab(tmp_path, "dead", dead_pid())
    marker = f"{folder}/vm/"
    sleeper = subprocess.Popen([*SLEEPER, marker])
    deadline = time.monotonic() + 10
    while marker not in procs.cmdline(sleeper.pid):  # until exec is done
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with (folder / "ledger.jsonl").open("a") as ledger:
        ledger.write(json.dumps({"op": "add", "id": 1, "kind": "process", "name": "qemu vm",
                                 "marker": marker}) + "\n")
    assert clean(tmp_path) == ["dead"]
    assert sleeper.wait(timeout=5) == -9


def test_clean_of_a_named_lab_that_is_live_is_refused(tmp_path):
    fake_lab(tmp_path, "live", os.getpid())
    with pytest.raises(ConfigError, match="no removable lab 'live'"):
        clean(tmp_path, only="live")


def test_a_lab_without_machines_cleans_up_after_itself(tmp_path):
    with Lab(base=tmp_path) as lab:
        assert lab.dir.is_dir()
        key = lab.dir / "id_ed25519"
        assert key.stat().st_mode & 0o777 == 0o600
        assert [r.id for r in list_labs(tmp_path)] == [lab.id]
        assert list_labs(tmp_path)[0].owner_alive
    assert list(tmp_path.iterdir()) == []


def test_lab_ids_differ_and_carry_the_worker(tmp_path):
    with Lab(base=tmp_path, worker="gw3") as one, Lab(base=tmp_path) as two:
        assert one.id != two.id
        assert one.id.endswith("-gw3")


@pytest.mark.parametrize("name", ["Web", "1vm", "a" * 21, "with space", "x/y"])
def test_bad_vm_names_are_refused_before_anything_starts(tmp_path, name):
    with Lab(base=tmp_path) as lab, pytest.raises(ConfigError, match="invalid machine name"):
        lab.vm(name)
