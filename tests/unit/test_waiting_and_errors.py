import time

import pytest

from vboxlab.errors import GuestCommandError, VboxlabError, WaitTimeout
from vboxlab.waiting import wait_until


def test_wait_until_returns_first_truthy_result():
    calls = iter([None, False, "done"])
    assert wait_until(lambda: next(calls), timeout=5, what="x", interval=0.01) == "done"


def test_wait_until_timeout_names_what_and_last_try():
    started = time.monotonic()
    with pytest.raises(WaitTimeout, match=r"waiting for the door; last try: still shut"):
        wait_until(lambda: None, timeout=0.3, what="the door", interval=0.01,
                   last_seen=lambda: "still shut")
    assert time.monotonic() - started < 3


def test_wait_until_abort_stops_early():
    def abort():
        raise RuntimeError("vm died")

    with pytest.raises(RuntimeError, match="vm died"):
        wait_until(lambda: None, timeout=30, what="x", abort=abort)


def test_guest_command_error_is_a_test_finding_with_everything_shown():
    error = GuestCommandError("web", "cat /nope", 1, "out text", "No such file")
    assert isinstance(error, AssertionError) and isinstance(error, VboxlabError)
    text = str(error)
    for part in ("web", "cat /nope", "status 1", "out text", "No such file"):
        assert part in text


def test_guest_command_error_cuts_long_output():
    error = GuestCommandError("vm", "seq", 2, "\n".join(str(i) for i in range(1000)), "")
    assert "lines cut" in str(error) and "999" in str(error)
