import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vboxlab import procs
from vboxlab.errors import ConfigError
from vboxlab.lab import Lab
from vboxlab.labdirs import clean, list_labs

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


def start_sleeper(marker):
    sleeper = subprocess.Popen([*SLEEPER, marker])
    deadline = time.monotonic() + 10
    while marker not in procs.cmdline(sleeper.pid):  # until exec is done
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return sleeper


def test_clean_releases_the_processes_a_dead_lab_left(tmp_path):
    folder = fake_lab(tmp_path, "dead", dead_pid())
    sleeper = start_sleeper(f"{folder}/vm/")
    with (folder / "ledger.jsonl").open("a") as ledger:
        ledger.write(json.dumps({"op": "add", "id": 1, "kind": "process", "name": "qemu vm"})
                     + "\n")
        ledger.write(json.dumps({"op": "set", "id": 1, "pid": sleeper.pid,
                                 "start": procs.start_time(sleeper.pid)}) + "\n")
    assert clean(tmp_path) == ["dead"]
    assert sleeper.wait(timeout=5) == -9


def test_cleanup_trusts_a_ledger_only_inside_its_own_lab(tmp_path):
    """A ledger is data: it may name only paths inside its lab and processes it recorded."""
    base = tmp_path / "labs"
    base.mkdir(mode=0o700)
    folder = fake_lab(base, "dead", dead_pid())
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    outside_dir = tmp_path / "precious-dir"
    outside_dir.mkdir()
    (folder / "escape").symlink_to(victim)
    by_marker = start_sleeper(f"{folder}/vm/")
    no_start = start_sleeper(f"{tmp_path}/other/")
    wrong_start = start_sleeper(f"{tmp_path}/third/")
    entries = [
        {"op": "add", "id": 1, "kind": "file", "name": "outside", "path": str(victim)},
        {"op": "add", "id": 2, "kind": "dir", "name": "outside", "path": str(outside_dir)},
        {"op": "add", "id": 3, "kind": "file", "name": "climb",
         "path": f"{folder}/../../precious.txt"},
        {"op": "add", "id": 4, "kind": "file", "name": "link", "path": str(folder / "escape")},
        {"op": "add", "id": 5, "kind": "process", "name": "marker", "marker": f"{folder}/vm/"},
        {"op": "add", "id": 6, "kind": "process", "name": "no start", "pid": no_start.pid},
        {"op": "add", "id": 7, "kind": "process", "name": "wrong start", "pid": wrong_start.pid,
         "start": procs.start_time(wrong_start.pid) + 1},
        {"op": "add", "id": 8, "kind": "dir", "name": "the base", "path": str(base)},
    ]
    (folder / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    assert clean(base) == ["dead"]
    assert victim.read_text() == "keep me" and outside_dir.is_dir() and base.is_dir()
    for sleeper in (by_marker, no_start, wrong_start):
        assert sleeper.poll() is None, "a process the ledger did not prove was killed"
        sleeper.kill()
        sleeper.wait()
    assert not folder.exists()


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


def test_the_state_folder_must_be_private(tmp_path):
    from vboxlab.errors import UnsafeStateDir
    from vboxlab.paths import private_dir

    made = private_dir(tmp_path / "new" / "labs")
    assert made.stat().st_mode & 0o777 == 0o700
    open_folder = tmp_path / "open"
    open_folder.mkdir(mode=0o755)
    open_folder.chmod(0o755)
    with pytest.raises(UnsafeStateDir, match=r"mode 0755.*chmod 700"):
        Lab(base=open_folder)
    link = tmp_path / "link"
    link.symlink_to(made)
    with pytest.raises(UnsafeStateDir, match="is a symlink"):
        Lab(base=link)
    with pytest.raises(UnsafeStateDir, match="is a symlink"):
        clean(link)
    plain = tmp_path / "file"
    plain.write_text("x")
    with pytest.raises(UnsafeStateDir, match="not a directory"):
        Lab(base=plain)
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 65534, 65534)
        with pytest.raises(UnsafeStateDir, match="belongs to uid 65534"):
            list_labs(foreign)
    assert list(open_folder.iterdir()) == []


def test_the_default_state_folder_in_tmp_is_checked_too(tmp_path, monkeypatch):
    from vboxlab.errors import UnsafeStateDir
    from vboxlab.paths import state_base

    monkeypatch.delenv("VBOXLAB_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    base = state_base()
    assert base == Path(f"/tmp/vboxlab-{os.getuid()}")
    monkeypatch.setenv("VBOXLAB_STATE_DIR", str(tmp_path / "planted"))
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o777)
    planted.chmod(0o777)  # what another user could have made in /tmp
    fake_lab(planted, "bait", dead_pid())
    with pytest.raises(UnsafeStateDir, match="must be private"):
        clean()
    assert (planted / "bait").is_dir()


def test_closing_a_lab_runs_every_step_even_when_one_fails(tmp_path, monkeypatch):
    lab = Lab(base=tmp_path / "labs")
    (lab.dir / "scratch").write_text("x")
    lab.ledger.add("file", "scratch", path=str(lab.dir / "scratch"))

    def broken() -> None:
        raise RuntimeError("killing machines failed")

    monkeypatch.setattr(lab, "_kill_machines", broken)
    lab.close()  # logged, not raised: the rest still ran
    assert not lab.dir.exists()
    assert lab.closed
