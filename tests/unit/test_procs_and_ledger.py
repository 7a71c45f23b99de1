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
    with owner.stdout:  # closed even if an assertion fails (else a warning lands elsewhere)
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


def test_a_process_is_killed_only_when_pid_and_start_time_match(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    sleepers = [subprocess.Popen(SLEEPER) for _ in range(3)]
    for sleeper in sleepers:
        while procs.start_time(sleeper.pid) is None:
            time.sleep(0.01)
    recorded, no_start, other_start = sleepers
    ledger.set(ledger.add("process", "recorded"), pid=recorded.pid,
               start=procs.start_time(recorded.pid))
    ledger.set(ledger.add("process", "no start"), pid=no_start.pid)
    ledger.set(ledger.add("process", "reused pid"), pid=other_start.pid,
               start=procs.start_time(other_start.pid) - 1)
    assert ledger.release_all() == []
    assert recorded.wait(timeout=5) == -signal.SIGKILL
    assert no_start.poll() is None and other_start.poll() is None
    for sleeper in (no_start, other_start):
        sleeper.kill()
        sleeper.wait()
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines if line["op"] == "done"] == [3, 2, 1]


def test_a_tied_child_started_from_a_thread_outlives_the_thread(tmp_path):
    """The parent-death signal follows the thread that forked: vboxlab forks from one that
    lives as long as the process."""
    from concurrent.futures import ThreadPoolExecutor

    with tmp_path.joinpath("err").open("wb") as err, ThreadPoolExecutor(2) as pool:
        child = pool.submit(procs.spawn, SLEEPER, tied=True, stderr=err).result()
    started = procs.start_time(child.pid)
    time.sleep(0.5)  # the pool's threads have ended
    assert procs.is_alive(child.pid, started) and child.poll() is None
    child.kill()
    child.wait()
