"""Bringing machines up side by side: the limit, progress, and stopping the rest on a failure."""

import logging
import threading
import time

import pytest

from vboxlab.bringup import BootStep, BringUpError, Progress, bring_up, check_parallel
from vboxlab.errors import BootTimeout, ConfigError
from vboxlab.lab import Lab


class FakeMachine:
    """What bring_up uses of a machine: start, kill, console."""

    def __init__(self, name, boot_seconds=0.2, fails=False):
        self.name = name
        self.boot_seconds = boot_seconds
        self.fails = fails
        self.killed = threading.Event()
        self.started = False

    def power_on(self):
        self.started = True

    def kill(self):
        self.killed.set()

    def console_tail(self, lines=30):
        return f"[    1.0] {self.name}: Kernel panic - not syncing: VFS: Unable to mount root fs"


class Recorder:
    """wait_ready for fake machines: counts how many wait at once; a killed one fails."""

    def __init__(self):
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def __call__(self, machine):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            if machine.fails:
                time.sleep(0.05)
                raise BootTimeout(f"{machine.name} did not answer within 0.05 s")
            if machine.killed.wait(machine.boot_seconds):
                raise BootTimeout(f"{machine.name} was killed while booting")
        finally:
            with self.lock:
                self.now -= 1


@pytest.fixture
def log():
    logger = logging.getLogger("test.bringup")
    logger.setLevel(logging.INFO)
    return logger


def configured(machine, started):
    """configure for fake machines: nothing to set up."""


def steps_for(machines, counted=True):
    return [BootStep(m.name, lambda m=m: m, counted=counted) for m in machines]


def test_no_more_than_the_limit_boot_at_once_and_all_come_up(log):
    machines = [FakeMachine(f"m{i}") for i in range(6)]
    recorder = Recorder()
    started = time.monotonic()
    got = bring_up(steps_for(machines), parallel=2, log=log, wait_answer=recorder,
                   configure=configured)
    assert list(got) == [m.name for m in machines]
    assert recorder.most == 2
    assert time.monotonic() - started >= 3 * 0.2  # three waves of two
    assert all(m.started for m in machines)


def test_namespace_hosts_are_not_counted_against_the_limit(log):
    machines = [FakeMachine(f"h{i}") for i in range(5)]
    recorder = Recorder()
    bring_up(steps_for(machines, counted=False), parallel=1, log=log, wait_answer=recorder,
             configure=configured)
    assert recorder.most == 5


def test_a_failing_machine_stops_the_others_and_is_named_with_its_console(log):
    slow = [FakeMachine(f"slow{i}", boot_seconds=30) for i in range(2)]
    bad = FakeMachine("bad", fails=True)
    never = FakeMachine("never")
    began = time.monotonic()
    with pytest.raises(BringUpError) as caught:
        bring_up(steps_for([*slow, bad, never]), parallel=3, log=log, wait_answer=Recorder(),
                 configure=configured)
    assert time.monotonic() - began < 10  # the slow ones were killed, not waited for
    error = caught.value
    assert error.machine == "bad"
    assert "bad did not answer within 0.05 s" in str(error)
    assert "Kernel panic" in str(error) and "bad:" in str(error)
    assert all(m.killed.is_set() for m in slow)
    assert not never.started  # its turn never came
    assert {m.name for m in error.created} == {"slow0", "slow1", "bad", "never"}  # to remove


def test_the_step_after_start_runs_before_the_wait(log):
    order = []
    machine = FakeMachine("a")

    step = BootStep("a", lambda: machine, started=lambda m: order.append("ports"))
    bring_up([step], parallel=1, log=log, wait_answer=lambda m: order.append("wait"),
             configure=lambda m, started: order.append("configure"))
    assert order == ["ports", "wait", "configure"]


def test_progress_lands_in_the_log_and_on_a_terminal(log, caplog):
    import io

    screen = io.StringIO()
    progress = Progress(["a", "b"], log, stream=screen)
    with caplog.at_level(logging.INFO, logger="test.bringup"):
        progress.set("a", "booting")
        progress.set("a", "answering")
        progress.set("b", "failed", "no console")
    text = caplog.text
    assert "bring-up: a booting at" in text
    assert "bring-up: a answering at" in text and "s booting)" in text
    assert "bring-up: b failed at" in text and "no console" in text
    drawn = screen.getvalue()
    assert "\x1b[2F" in drawn  # the two lines were redrawn in place
    assert drawn.rstrip().splitlines()[-1].removeprefix("\x1b[2K").split()[:2] == ["b", "failed"]
    assert progress.states() == {"a": "answering", "b": "failed"}


def test_listeners_hear_every_step_and_a_failing_one_stops_nothing(log):
    heard = []

    def broken(name, state, at):
        raise RuntimeError("listener bug")

    machines = [FakeMachine("a"), FakeMachine("b")]
    bring_up(steps_for(machines), parallel=2, log=log, wait_answer=Recorder(),
             configure=configured, listeners=[broken, lambda *step: heard.append(step)])
    for name in ("a", "b"):
        states = [state for who, state, _ in heard if who == name]
        assert states == ["creating", "booting", "answering", "configured"]
        seconds = [at for who, _, at in heard if who == name]
        assert seconds == sorted(seconds) and seconds[0] >= 0


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", ""])
def test_a_bad_limit_is_refused_with_what_to_give(value):
    with pytest.raises(ConfigError, match="whole number from 1"):
        check_parallel(value, "--lab-parallel")


def test_names_given_twice_are_refused(log):
    machines = [FakeMachine("a"), FakeMachine("a")]
    with pytest.raises(ConfigError, match="named twice: a"):
        bring_up(steps_for(machines), parallel=2, log=log, wait_answer=Recorder(),
                 configure=configured)


def test_lab_vms_refuses_unknown_settings_before_anything_starts(tmp_path):
    with Lab(base=tmp_path) as lab:
        with pytest.raises(ConfigError, match="web: unknown setting 'memroy'"):
            lab.vms({"web": {"memroy": 512}})
        with pytest.raises(ConfigError, match="db: give a dict of settings"):
            lab.vms({"db": "tiny"})  # type: ignore[dict-item]
        assert lab.machines == {}
        with pytest.raises(ConfigError, match="lab parallel=0"):
            Lab(base=tmp_path, parallel=0)
