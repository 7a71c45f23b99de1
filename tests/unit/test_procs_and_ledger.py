import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from vboxlab import procs
from vboxlab.ledger import Ledger

SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


def test_start_time_tells_a_process_from_a_reused_pid():
    me = os.getpid()
    started = procs.start_time(me)
    assert started is not None
    assert procs.is_alive(me, started)
    assert not procs.is_alive(me, started + 1)


def test_a_tied_child_dies_when_its_owner_is_sigkilled(tmp_path):
    marker = tmp_path / "marker"
    owner = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from vboxlab import procs
        child = procs.spawn([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"],
                            tied=True, stderr=sys.stderr.buffer)
        print(child.pid, flush=True)
        time.sleep(300)
    """)], stdout=subprocess.PIPE, text=True)
    child = int(owner.stdout.readline())
    started = procs.start_time(child)
    assert procs.is_alive(child, started)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    while procs.is_alive(child, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not procs.is_alive(child, started)
    owner.stdout.close()


def test_ledger_releases_pending_resources_newest_first(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    kept = tmp_path / "kept"
    kept.write_text("x")
    gone = tmp_path / "gone"
    gone.write_text("x")
    rid_kept = ledger.add("file", "kept", path=str(kept))
    ledger.add("file", "gone", path=str(gone))
    ledger.done(rid_kept)
    folder = tmp_path / "dir"
    folder.mkdir()
    ledger.add("dir", "dir", path=str(folder))
    sleeper = subprocess.Popen([*SLEEPER, f"{tmp_path}/marker/"])
    rid = ledger.add("process", "sleeper", marker=f"{tmp_path}/marker/")
    ledger.set(rid, pid=sleeper.pid, start=procs.start_time(sleeper.pid))
    assert [r.name for r in ledger.pending()] == ["gone", "dir", "sleeper"]
    assert Ledger(tmp_path / "ledger.jsonl").release_all() == []
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    assert kept.exists() and not gone.exists() and not folder.exists()
    assert ledger.pending() == []


def test_ledger_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "ledger.jsonl"
    ledger = Ledger(path)
    ledger.add("file", "a", path=str(tmp_path / "a"))
    with path.open("a") as handle:
        handle.write('{"op": "add", "id": 9, "ki')
    assert [r.name for r in Ledger(path).pending()] == ["a"]


def test_process_found_by_marker_before_its_pid_was_written(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    marker = f"{tmp_path}/vm/"
    ledger.add("process", "qemu vm", marker=marker)
    sleeper = subprocess.Popen([*SLEEPER, marker + "console.log"])
    deadline = time.monotonic() + 10
    while marker + "console.log" not in procs.cmdline(sleeper.pid):  # until exec is done
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert ledger.release_all() == []
    assert sleeper.wait(timeout=5) == -signal.SIGKILL
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert lines[-1] == {"op": "done", "id": 1}
