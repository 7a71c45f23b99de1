"""The agent channel end to end against the real ``vboxlab-agent``, on a socket on the host.

The agent runs here as it runs in a guest, except that ``--fd 0`` hands it a
socket instead of the virtio-serial port; commands are shell commands on this
host, files live under ``tmp_path``.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vboxlab.agent import agent_binary
from vboxlab.boottimeline import BootTimeline
from vboxlab.channels.agent import AgentChannel
from vboxlab.channels.agent_frames import (
    HEADER,
    MAGIC,
    FrameReader,
    Kind,
    decode_all,
    encode,
    path_payload,
)
from vboxlab.errors import BootTimeout, ChannelError, CommandTimeout, ConfigError, GuestFileNotFound

# -- the wire format ------------------------------------------------------


def test_frames_round_trip_in_any_pieces():
    stream = encode(Kind.EXEC, 1, b"echo one") + encode(Kind.EXEC, 2, b"x" * 70000)
    reader = FrameReader()
    frames = []
    for start in range(0, len(stream), 777):
        frames += reader.feed(stream[start:start + 777])
    assert [(f.kind, f.seq, len(f.payload)) for f in frames] == [(Kind.EXEC, 1, 8),
                                                                (Kind.EXEC, 2, 70000)]
    assert reader.dropped_bytes == 0


def test_damaged_and_partial_frames_are_dropped_and_the_stream_resumes():
    good = encode(Kind.STDOUT, 5, b"hello")
    damaged = bytearray(encode(Kind.STDOUT, 4, b"lost"))
    damaged[-1] ^= 0xFF
    # the tail of a frame a restore cut in two, a damaged frame, garbage, then a good frame
    stream = good[7:] + bytes(damaged) + b"\x00garbage VBX" + good
    reader = FrameReader()
    assert reader.feed(stream) == [(Kind.STDOUT, 0, 5, b"hello")]
    assert reader.dropped_bytes > 0


def test_a_header_claiming_too_much_is_not_waited_for():
    bogus = struct.pack("<IBBHIII", MAGIC, Kind.DATA, 0, 0, 9, (1 << 20) + 1, 0)
    assert decode_all(bogus + encode(Kind.OK, 9)) == [(Kind.OK, 0, 9, b"")]
    assert len(encode(Kind.OK, 1)) == HEADER.size


def test_guest_paths_are_checked():
    for bad in ("", "a\0b", "x" * 4096):
        with pytest.raises(ValueError, match="guest path"):
            path_payload(bad)
    with pytest.raises(ValueError, match="over"):
        encode(Kind.DATA, 1, bytes((1 << 20) + 1))


# -- the real agent over a socket ------------------------------------------


class AgentOnHost:
    """A listening socket; each connection is served by a fresh ``vboxlab-agent --fd 0``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(1)
        self.procs: list[subprocess.Popen[bytes]] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                self.procs.append(subprocess.Popen([str(agent_binary()), "--fd", "0"],
                                                   stdin=conn))

    def close(self) -> None:
        self.server.close()
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def agent(tmp_path) -> Iterator[tuple[AgentChannel, AgentOnHost]]:
    host = AgentOnHost(tmp_path / "agent.sock")
    channel = AgentChannel("box", host.path, check_alive=lambda: None)
    channel.connect(timeout=20)
    yield channel, host
    channel.close()
    host.close()


def test_commands_keep_stdout_stderr_and_status_apart(agent):
    channel, _ = agent
    result = channel.run("printf out; printf err >&2; exit 3", timeout=10)
    assert (result.rc, result.stdout, result.stderr) == (3, "out", "err")
    assert channel.run("kill -9 $$", timeout=10).rc == 128 + 9
    big = channel.run("head -c 3000000 /dev/zero | tr '\\0' a", timeout=30).stdout
    assert big == "a" * 3_000_000
    assert channel.run("cat; echo end", timeout=10).stdout == "end\n"  # stdin is /dev/null


def test_a_command_past_its_timeout_is_killed_with_its_children(agent, tmp_path):
    channel, _ = agent
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"did not finish within 0.5 s \(killed\).*early"):
        channel.run(f"echo early; sleep 60 & echo $! > {pid_file}; wait", timeout=0.5)
    assert time.monotonic() - started < 5
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()
    assert channel.run("echo next", timeout=10).stdout == "next\n"


def test_a_background_process_holding_stdout_does_not_hold_the_command(agent):
    channel, _ = agent
    started = time.monotonic()
    result = channel.run("sleep 5 & echo started", timeout=10)
    assert result.stdout == "started\n" and time.monotonic() - started < 3


def test_commands_from_several_threads_get_their_own_answers(agent):
    channel, _ = agent
    results: dict[int, str] = {}

    def one(n: int) -> None:
        results[n] = channel.run(f"sleep 0.$(({n} % 3)); echo {n}", timeout=20).stdout

    threads = [threading.Thread(target=one, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: f"{n}\n" for n in range(12)}


def test_a_command_in_flight_when_interrupted_fails_clearly_and_the_next_works(agent):
    channel, _ = agent
    caught: list[BaseException] = []

    def slow() -> None:
        try:
            channel.run("sleep 1; echo late", timeout=20)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.3)
    channel.interrupt("box was restored to snapshot 'clean'")
    thread.join(timeout=10)
    assert len(caught) == 1 and isinstance(caught[0], ChannelError)
    assert "restored to snapshot 'clean' while this request ran" in str(caught[0])
    channel.connect(timeout=10)  # re-synchronise, keeping the connection
    assert channel.run("echo now", timeout=10).stdout == "now\n"
    time.sleep(1.2)  # the interrupted command's answer arrives and is dropped, never mixed in
    assert channel.run("echo again", timeout=10).stdout == "again\n"
    assert channel.stale_frames >= 2


def test_a_half_frame_left_in_the_agent_costs_nothing_after_a_resync(agent):
    channel, _ = agent
    # a header announcing 100 bytes that never come, as a restore may leave behind
    channel._send(struct.pack("<IBBHIII", MAGIC, Kind.EXEC, 0, 0, 77, 100, 0) + b"rm -rf")
    channel.connect(timeout=10)  # HELLO is repeated until one gets through
    assert channel.run("echo intact", timeout=10).stdout == "intact\n"


def test_copy_files_and_trees_both_ways(agent, tmp_path):
    channel, _ = agent
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "sub" / "run.sh").chmod(0o750)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1_500_000))
    channel.put(tree, str(tmp_path / "copy"))
    channel.put(big, str(tmp_path / "copy" / "big.bin"))
    assert channel.run(f"{tmp_path}/copy/sub/run.sh", timeout=10).stdout == "ran\n"
    assert (tmp_path / "copy" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750
    channel.get(str(tmp_path / "copy"), tmp_path / "back")
    assert (tmp_path / "back" / "a.txt").read_text() == "alpha"
    assert (tmp_path / "back" / "big.bin").read_bytes() == big.read_bytes()
    assert (tmp_path / "back" / "sub" / "run.sh").stat().st_mode & 0o777 == 0o750


def test_file_errors_name_the_path(agent, tmp_path):
    channel, _ = agent
    with pytest.raises(GuestFileNotFound, match="missing"):
        channel.get(str(tmp_path / "missing"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
    source = tmp_path / "f"
    source.write_text("x")
    with pytest.raises(GuestFileNotFound, match="nowhere/f"):
        channel.put(source, str(tmp_path / "nowhere" / "f"))
    with pytest.raises(ChannelError, match="Is a directory"):
        channel.put(source, str(tmp_path))
    with pytest.raises(ConfigError, match="NUL"):
        channel.run("echo a\0b", timeout=5)


def test_read_files_reads_regular_files_and_says_why_it_skipped_the_rest(agent, tmp_path):
    channel, _ = agent
    (tmp_path / "small").write_bytes(b"s" * 10)
    (tmp_path / "large").write_bytes(b"l" * 100)
    (tmp_path / "link").symlink_to(tmp_path / "small")
    os.mkfifo(tmp_path / "fifo")
    paths = [str(tmp_path / n) for n in ("small", "large", "link", "fifo", "missing")]
    paths += [str(tmp_path)] + [str(tmp_path / "small")] * 20
    found = list(channel.read_files(paths, limit=50))
    assert [f.path for f in found] == paths
    assert found[0].data == b"s" * 10
    assert found[1].skipped == "100 bytes, over the 50 byte limit"
    assert found[2].skipped == found[3].skipped == found[5].skipped == "not a regular file"
    assert found[4].skipped.startswith("unreadable: ")
    assert all(f.data == b"s" * 10 for f in found[6:])


def test_no_agent_is_a_boot_timeout_naming_the_socket(tmp_path):
    quiet = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    quiet.bind(str(tmp_path / "quiet.sock"))
    quiet.listen(1)
    try:
        channel = AgentChannel("mute", tmp_path / "quiet.sock", check_alive=lambda: None)
        with pytest.raises(BootTimeout, match=r"guest agent of mute.*quiet\.sock"):
            channel.connect(timeout=0.6)
        with pytest.raises(BootTimeout, match=r"nothing\.sock"):
            AgentChannel("gone", tmp_path / "nothing.sock", lambda: None).connect(timeout=0.3)
    finally:
        quiet.close()


def test_the_agent_reports_boot_facts_the_timeline_splits(agent):
    channel, _ = agent
    facts = channel.ready_facts
    assert facts["protocol"] == "1"
    assert 0 <= float(facts["agent"]) <= float(facts["uptime"])


def test_boot_timeline_phases_and_what_makes_no_sense():
    facts = {"uptime": "3.5", "userspace": "2.0", "agent": "3.4"}
    timeline = BootTimeline.from_facts(10.0, 14.0, facts, first_command=0.02)
    assert timeline is not None
    assert timeline.phases() == {"firmware and kernel loading": 0.5, "kernel": 2.0,
                                 "userspace to agent start": 1.4, "agent start to ready": 0.1,
                                 "first command": 0.02}
    merged = BootTimeline.from_facts(10.0, 14.0, {**facts, "userspace": "-1.000"})
    assert merged is not None and "kernel and userspace to agent start" in merged.phases()
    assert BootTimeline.from_facts(10.0, 14.0, {"uptime": "3.5"}) is None
    assert BootTimeline.from_facts(10.0, 14.0, {**facts, "agent": "9"}) is None  # after uptime
    assert BootTimeline.from_facts(10.0, 11.0, facts) is None  # longer than the boot itself


def test_a_hostile_guest_gets_no_path_out_of_the_copy_and_no_crash(tmp_path):
    """A fake agent answers a copy with a folder whose entries climb out, and a short EXIT."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "evil.sock"))
    server.listen(1)

    def evil() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(encode(Kind.READY, 0, b"protocol=1"))
            reader = FrameReader()
            while data := conn.recv(65536):
                for frame in reader.feed(data):
                    if frame.kind == Kind.READ:
                        conn.sendall(encode(Kind.STAT_REPLY, frame.seq,
                                            struct.pack("<IQ", 0o40755, 0)))
                        conn.sendall(encode(Kind.OK, frame.seq, struct.pack("<Q", 0)))
                    elif frame.kind == Kind.LIST:
                        conn.sendall(encode(Kind.NAMES, frame.seq, b"ok\0../../escaped\0"))
                        conn.sendall(encode(Kind.OK, frame.seq))
                    elif frame.kind == Kind.EXEC:
                        conn.sendall(encode(Kind.EXIT, frame.seq, b"\x01"))

    thread = threading.Thread(target=evil, daemon=True)
    thread.start()
    channel = AgentChannel("evil", tmp_path / "evil.sock", check_alive=lambda: None)
    try:
        channel.connect(timeout=10)
        (tmp_path / "inside").mkdir()
        with pytest.raises(ChannelError, match=r"listed '\.\./\.\./escaped'.*refusing"):
            channel.get("/srv", tmp_path / "inside" / "copy")
        assert not (tmp_path / "escaped").exists()
        with pytest.raises(ChannelError, match="malformed answer"):
            channel.run("true", timeout=10)
    finally:
        channel.close()
        server.close()
