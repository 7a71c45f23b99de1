"""The guest agent channel in real QEMU guests: readiness, restores, and SSH beside it."""

import threading
import time

import pytest

from vboxlab.channels import AgentChannel, SSHChannel
from vboxlab.errors import ChannelError, ConfigError
from vboxlab.lab import Lab
from vboxlab.providers.qemu_argv import AGENT_PORT, build_argv


def test_tiny_answers_over_the_agent_and_tells_where_its_boot_went(vm, lab):
    assert isinstance(vm.channel, AgentChannel)
    timeline = vm.boot_timeline
    assert timeline is not None
    phases = timeline.phases()
    assert list(phases) == ["firmware and kernel loading", "kernel", "userspace to agent start",
                            "agent start to ready", "first command"]
    assert all(seconds >= 0 for seconds in phases.values())
    assert phases["kernel"] > 0.1  # the kernel's own "Run /init", from the kernel log
    assert timeline.uptime == pytest.approx(sum(list(phases.values())[1:4]), abs=0.01)
    assert f"{vm.name}: boot timeline: firmware and kernel loading" in \
        (lab.dir / "lab.log").read_text()
    # the agent is the template's, started by init, and it serves only its own port
    assert vm.succeed("cat /sys/class/virtio-ports/*/name").split() == [AGENT_PORT]
    assert "vboxlab-agent" in vm.succeed("cat /proc/$PPID/cmdline")
    assert vm.succeed("echo $HOME; pwd") == "/root\n/root\n"


def test_a_command_in_flight_across_a_restore_fails_and_the_next_works_at_once(vm):
    vm.snapshot("before-slow")
    caught: list[BaseException] = []

    def slow() -> None:
        try:
            vm.execute("sleep 2; echo late", timeout=30)
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.5)
    vm.restore("before-slow")
    thread.join(timeout=30)
    assert len(caught) == 1 and isinstance(caught[0], ChannelError)
    assert f"{vm.name} was restored to snapshot 'before-slow' while this request ran" in \
        str(caught[0])
    assert vm.succeed("echo next") == "next\n"
    time.sleep(2.5)  # the replayed guest never answers into a later request
    assert vm.succeed("echo mine") == "mine\n"
    vm.delete_snapshot("before-slow")


def test_ssh_still_reaches_a_machine_that_answers_over_the_agent(vm, lab):
    ssh = vm.handle.ssh_channel(lab.user_key.paramiko_key())
    try:
        ssh.connect(timeout=60)
        assert ssh.run("cat /etc/hostname", timeout=30).stdout.strip() == vm.name
    finally:
        ssh.close()


def test_lab_channel_ssh_leaves_the_agent_out(tmp_path):
    with Lab(base=tmp_path / "labs", channel="ssh") as ssh_lab:
        machine = ssh_lab.vm("plain", boot=False)
        assert isinstance(machine.channel, SSHChannel)
        assert machine.handle.launch.agent is None
        argv = " ".join(build_argv(machine.handle.launch))
        assert "virtserialport" not in argv and "agent.sock" not in argv
    with pytest.raises(ConfigError, match=r"command channel .serial."):
        Lab(base=tmp_path / "labs", channel="serial")


O_ASYNC = 0o20000  # fdinfo's flags are octal

# the open flags of the agent's virtio-serial port (the agent's pid in $AGENT)
PORT_FLAGS = ("for f in /proc/$AGENT/fd/*; do case $(readlink $f) in /dev/vport*)"
              " grep '^flags' /proc/$AGENT/fdinfo/${f##*/} | cut -f2;; esac; done")

WATCH_IDLE_AGENT = f"""
sleep 1
{PORT_FLAGS} > /tmp/idle-flags
grep '^voluntary_ctxt_switches' /proc/$AGENT/status | cut -f2 > /tmp/idle-woke
sleep 2
grep '^voluntary_ctxt_switches' /proc/$AGENT/status | cut -f2 >> /tmp/idle-woke
"""


def test_with_no_host_the_agent_sleeps_until_one_comes_and_answers_it(vm, tmp_path):
    """A kept lab's guests sit with no host on the agent's socket: the agent asks its port
    for SIGIO and sleeps (it used to look every 10 ms, 15 % of a core per idle TCG guest);
    a host that comes back is answered, and while one is there no SIGIO comes per message."""
    script = tmp_path / "watch.sh"
    script.write_text(WATCH_IDLE_AGENT)
    vm.copy_to(script, "/tmp/watch.sh")
    # it outlives this command and watches the agent (the command shell's parent) with no host
    vm.succeed("AGENT=$PPID sh /tmp/watch.sh </dev/null >/dev/null 2>&1 &")
    vm.channel.close("the host goes away for the test")
    time.sleep(4)
    vm.channel.connect(timeout=30)
    flags = int(vm.succeed("cat /tmp/idle-flags").strip(), 8)
    before, after = (int(v) for v in vm.succeed("cat /tmp/idle-woke").split())
    assert flags & O_ASYNC, "with no host the agent waits for the port's SIGIO"
    # 2 s with no host: 200 wake-ups when it looked every 10 ms; now the 1 s safety net
    assert after - before <= 10, f"the agent woke {after - before} times in 2 s with no host"
    assert vm.succeed("echo back") == "back\n"
    port_flags = vm.succeed(f"AGENT=$PPID; {PORT_FLAGS}")
    assert not int(port_flags.strip(), 8) & O_ASYNC, "a connected host gets no SIGIO per message"
