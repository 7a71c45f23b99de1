"""The Machine API against a real QEMU guest of the tiny template."""

import threading
import time
import urllib.request

import pytest

from vboxlab.errors import ChannelError, CommandTimeout, GuestCommandError, MachineDied, WaitTimeout


def test_succeed_returns_stdout(vm):
    assert vm.succeed("echo hello; echo to-stderr >&2") == "hello\n"
    assert vm.succeed("cat /etc/hostname").strip() == vm.name


def test_failed_command_shows_command_status_stdout_and_stderr(vm):
    with pytest.raises(GuestCommandError) as info:
        vm.succeed("echo partial; echo broken >&2; exit 7")
    error = info.value
    assert (error.rc, error.stdout, error.stderr) == (7, "partial\n", "broken\n")
    assert "exit 7" in str(error) and "status 7" in str(error) and "broken" in str(error)


def test_fail_and_execute(vm):
    assert vm.fail("ls /nonexistent; false") == ""
    with pytest.raises(GuestCommandError, match="expected a non-zero exit status"):
        vm.fail("true")
    result = vm.execute("printf out; printf err >&2; exit 3")
    assert (result.rc, result.stdout, result.stderr) == (3, "out", "err")
    assert result.failed and not result.succeeded


def test_large_output_arrives_whole(vm):
    out = vm.succeed("seq 1 200000")
    assert out.splitlines()[-1] == "200000" and len(out.splitlines()) == 200000


def test_command_that_hangs_times_out(vm):
    started = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 1 s"):
        vm.execute("echo started; sleep 60", timeout=1)
    assert time.monotonic() - started < 10
    assert vm.succeed("echo still usable") == "still usable\n"


def test_wait_until_succeeds_and_its_timeout(vm):
    vm.succeed("(sleep 1; touch /tmp/flag) >/dev/null 2>&1 &")
    vm.wait_until_succeeds("test -f /tmp/flag", timeout=30)
    with pytest.raises(WaitTimeout, match=r"last try: exit status 1"):
        vm.wait_until_succeeds("test -f /tmp/never", timeout=1)
    vm.wait_until_fails("test -f /tmp/never", timeout=5)


def test_wait_for_port_and_forward_port_to_the_host(vm):
    vm.succeed("mkdir -p /tmp/www && echo 'hello from the guest' > /tmp/www/index.html")
    vm.succeed("httpd -p 8080 -h /tmp/www")
    vm.wait_for_port(8080, timeout=30)
    port = vm.forward_port(8080)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
        assert response.read() == b"hello from the guest\n"
    assert vm.forward_port(8080) == port
    with pytest.raises(WaitTimeout, match="listener on TCP port 9999"):
        vm.wait_for_port(9999, timeout=1)


def test_copy_files_and_trees_both_ways(vm, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("alpha")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (tree / "sub" / "run.sh").chmod(0o755)
    vm.copy_to(tree, "/tmp/tree")
    assert vm.succeed("cat /tmp/tree/a.txt") == "alpha"
    assert vm.succeed("/tmp/tree/sub/run.sh") == "ran\n"
    vm.succeed("mkdir -p /tmp/out/deep && echo beta > /tmp/out/deep/b.txt")
    vm.copy_from("/tmp/out", tmp_path / "out")
    assert (tmp_path / "out" / "deep" / "b.txt").read_text() == "beta\n"
    single = tmp_path / "single.bin"
    single.write_bytes(bytes(range(256)) * 4096)
    vm.copy_to(single, "/tmp/single.bin")
    vm.copy_from("/tmp/single.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == single.read_bytes()
    with pytest.raises(FileNotFoundError, match="does not exist on the host"):
        vm.copy_to(tmp_path / "missing", "/tmp/x")


def test_console_log_records_the_boot(vm):
    assert "vboxlab: tiny 1.0.0 ready" in vm.console_log.read_text()


def test_channels_come_back_by_themselves_after_their_daemons_restart(vm, lab):
    # the agent: a command that kills it fails at once, and init's respawn answers the next
    with pytest.raises(ChannelError, match="guest agent of vm restarted"):
        vm.execute("kill $PPID; sleep 20", timeout=60)
    assert vm.succeed("echo back") == "back\n"
    # SSH: the listener goes, busybox init respawns it, the channel reconnects by itself
    vm.wait_for_port(22)
    ssh = vm.handle.ssh_channel(lab.user_key.paramiko_key())
    try:
        ssh.connect(timeout=60)
        vm.succeed("kill $(cat /run/sshd.pid)")
        ssh.close()
        ssh.connect(timeout=30)
        assert ssh.run("echo back", timeout=30).stdout == "back\n"
    finally:
        ssh.close()


def test_stop_and_start_keep_the_data_disk(vm):
    vm.succeed("echo persisted > /data/state && sync")
    vm.stop()
    assert vm.state.value == "stopped"
    vm.start()
    assert vm.succeed("cat /data/state") == "persisted\n"
    assert vm.succeed("cat /tmp/anything 2>/dev/null || echo fresh-tmp") == "fresh-tmp\n"


def test_guest_that_dies_mid_command_fails_within_seconds(vm):
    def pull_the_plug():
        time.sleep(1.5)
        vm.handle.kill()

    threading.Thread(target=pull_the_plug).start()
    started = time.monotonic()
    with pytest.raises((MachineDied, ChannelError)):
        vm.execute("sleep 120", timeout=300)
    assert time.monotonic() - started < 15


def test_guest_powering_itself_off_mid_command_is_reported(vm):
    started = time.monotonic()
    with pytest.raises((MachineDied, ChannelError)):
        vm.execute("sleep 1; echo o > /proc/sysrq-trigger; sleep 60", timeout=300)
    assert time.monotonic() - started < 20
    with pytest.raises(MachineDied, match="not running"):
        vm.succeed("true")
