"""The control socket of a long-lived lab: wire format, argument checks, errors, permissions.

A real Lab (no machines booted), a real ControlServer on a UNIX socket, real
clients; the actions on machines and links are covered by
tests/integration/test_long_lived_labs.py.
"""

import contextlib
import json
import os
import socket
import stat
import threading

import pytest
from click.testing import CliRunner

from vboxlab.cli import main
from vboxlab.control.actions import ACTIONS, LabControl
from vboxlab.control.launcher import client, down, status
from vboxlab.control.protocol import MAX_REQUEST, ControlClient, ControlError, read_line
from vboxlab.control.server import ControlServer, peer_uid
from vboxlab.errors import ConfigError, HostError, MachineNotFound
from vboxlab.lab import Lab
from vboxlab.labdirs import find_lab


@pytest.fixture
def served(tmp_path):
    """A lab (no machines) served on its control socket; yields (lab, client, downs)."""
    downs = []
    with Lab(base=tmp_path / "labs", name="ctl", role="up") as lab:
        control = LabControl(lab, None, on_down=lambda: downs.append(True))
        server = ControlServer(lab.dir / "control.sock", control, lab.log)
        server.start()
        try:
            yield lab, ControlClient(server.path, timeout=10), downs
        finally:
            server.close()


def raw(path, data: bytes) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(data)
        return json.loads(read_line(sock, 1 << 20, "reply"))


def test_the_socket_is_private_and_knows_its_peer(served):
    lab, ctl, _ = served
    mode = ctl.path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(lab.dir.stat().st_mode) == 0o700
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(ctl.path))
        assert peer_uid(sock) == os.getuid()


def test_status_describes_the_lab_from_its_folder(served):
    lab, ctl, _ = served
    found = ctl.call("status")
    assert found["id"] == "ctl" and found["status"] == "up" and found["role"] == "up"
    assert found["machines"] == [] and found["links"] == []
    assert found["owner_pid"] > 0 and found["folder"] == str(lab.dir)


def test_bad_requests_get_errors_that_say_what_to_fix(served):
    lab, ctl, downs = served
    with pytest.raises(ConfigError, match=r"unknown action 'nope'; actions: .*exec"):
        ctl.call("nope")
    with pytest.raises(ConfigError, match=r"exec: machine: Field required; command: Field req"):
        ctl.call("exec")
    with pytest.raises(ConfigError, match=r"exec: timeout: Input should be less than or equal"):
        ctl.call("exec", machine="h1", command="true", timeout=10_000)
    with pytest.raises(ConfigError, match=r"status: surprise: Extra inputs are not permitted"):
        ctl.call("status", surprise=1)
    with pytest.raises(ConfigError, match=r"machine '../x': not a machine name"):
        ctl.call("machine.stop", machine="../x")
    with pytest.raises(MachineNotFound, match=r"lab ctl has no machine 'h9'"):
        ctl.call("machine.kill", machine="h9")
    with pytest.raises(ConfigError, match=r"lab ctl has no network"):
        ctl.call("link.set", a="a", b="b", properties={"delay": "5ms"})
    assert raw(ctl.path, b"not json\n")["error"].startswith("bad control request")
    assert raw(ctl.path, b'["status"]\n')["error"] == \
        "a control request is an object with an 'action' string"
    assert raw(ctl.path, b'{"action": "status", "args": [1]}\n')["error"] == \
        "status: args must be an object, not list"
    assert downs == []
    assert "control: status" in (lab.dir / "lab.log").read_text()


def test_an_endless_request_is_cut_off_not_buffered(served):
    _, ctl, _ = served
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(ctl.path))
        with contextlib.suppress(OSError):  # the server may hang up while we still send
            sock.sendall(b"x" * (MAX_REQUEST + 70000))
        reply = json.loads(read_line(sock, 1 << 20, "reply"))
    assert not reply["ok"] and f"a line over {MAX_REQUEST} bytes" in reply["error"]
    with pytest.raises(ConfigError, match="the control socket takes at most"):
        ctl.call("exec", machine="h1", command="x" * MAX_REQUEST)


def test_clients_run_side_by_side(served):
    _, ctl, _ = served
    results = []
    threads = [threading.Thread(target=lambda: results.append(ctl.call("status")["id"]))
               for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["ctl"] * 8


def test_down_is_an_action_that_asks_the_supervisor_to_stop(served):
    _, ctl, downs = served
    assert ctl.call("down") == {"lab": "ctl", "state": "going down"}
    assert downs == [True]


def test_a_gone_supervisor_is_a_clear_error(tmp_path):
    with pytest.raises(HostError, match=r"cannot reach the lab's supervisor at .*is the lab "):
        ControlClient(tmp_path / "none.sock").call("status")
    left, right = socket.socketpair()
    with left, pytest.raises(ControlError, match="closed the connection"):
        right.close()
        read_line(left, 10, "test")


def test_every_action_declares_its_arguments_and_whether_it_changes_the_lab():
    assert {"status", "exec", "machine.stop", "snapshot.restore", "link.set", "capture.start",
            "down"} <= set(ACTIONS)
    for action in ACTIONS.values():
        assert action.help and action.args.model_config.get("extra") == "forbid"
    assert not ACTIONS["status"].mutates and ACTIONS["exec"].mutates


def test_a_session_lab_is_shown_read_only(tmp_path):
    base = tmp_path / "labs"
    with Lab(base=base) as lab:
        record = find_lab(base, lab.id)
        assert record.status == "session"
        assert status(base)[0]["status"] == "session"
        with pytest.raises(ConfigError, match="belongs to the running test session"):
            client(record)
        with pytest.raises(ConfigError, match="it ends with that session"):
            down(base, lab.id)
        result = CliRunner().invoke(main, ["exec", lab.id, "vm", "true", "--lab-dir",
                                           str(base)])
        assert result.exit_code == 2 and "is not a `vboxlab up` lab" in result.output
        result = CliRunner().invoke(main, ["status", "--lab-dir", str(base)])
        assert result.exit_code == 0 and f"{lab.id}\tsession" in result.output


def test_lab_names_are_checked_and_never_reused(tmp_path):
    base = tmp_path / "labs"
    with pytest.raises(ConfigError, match="invalid lab name 'Bad_Name'"):
        Lab(base=base, name="Bad_Name")
    with Lab(base=base, name="twice"), \
            pytest.raises(ConfigError, match="a lab called 'twice' already exists"):
        Lab(base=base, name="twice")
