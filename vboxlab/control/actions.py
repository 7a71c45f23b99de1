"""What a long-lived lab's supervisor can be asked to do: each action a checked call of the library.

Every action has a pydantic model of its arguments (unknown fields refused, each
value checked and bounded) and a handler that calls the same library functions
a test would (:class:`~vboxlab.machine.Machine`, :class:`~vboxlab.net.network.
LinkHandle`, :class:`~vboxlab.net.network.Network`). Actions that change the lab
are marked ``mutates``: the dashboard and the MCP server show or allow them by
that mark. Calls on one machine are serialised (a stop never races a restore);
calls on different machines run side by side.
"""

from __future__ import annotations

import base64
import binascii
import shlex
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vboxlab.errors import ConfigError
from vboxlab.labdirs import read_lab
from vboxlab.labstatus import describe_lab
from vboxlab.names import NAME_RULE, is_valid_name
from vboxlab.net.topology import describe_impairment
from vboxlab.snapshots import check_name as check_snapshot_name

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine
    from vboxlab.net.network import Network

#: a command's stdout and stderr are each cut to this many characters in a reply
MAX_OUTPUT = 1 << 20
MAX_COMMAND = 64 << 10
Direction = Literal["a_to_b", "b_to_a"]
Engine = Literal["yara", "clamav"]


class Args(BaseModel):
    """Arguments of an action: nothing beyond the declared fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoArgs(Args):
    pass


class MachineArgs(Args):
    machine: str = Field(min_length=1, max_length=64)


class StopArgs(MachineArgs):
    timeout: float = Field(30.0, gt=0, le=600)


class ConsoleArgs(MachineArgs):
    lines: int = Field(50, ge=1, le=2000)


class SnapshotTakeArgs(MachineArgs):
    name: str | None = Field(None, min_length=1, max_length=64)


class SnapshotArgs(MachineArgs):
    name: str = Field(min_length=1, max_length=64)


class SnapshotDeleteArgs(SnapshotArgs):
    subtree: bool = False


#: the most a file copied in or out through the control socket may hold
MAX_FILE = 512 << 10
MAX_FLOWS = 50


class FileReadArgs(MachineArgs):
    path: str = Field(min_length=2, max_length=4096, pattern=r"^/[^\x00]*$")


class FileWriteArgs(FileReadArgs):
    content_base64: str = Field(max_length=(MAX_FILE * 4) // 3 + 4)
    mode: int = Field(0o644, ge=0, le=0o7777)


class ScanArgs(MachineArgs):
    kind: Literal["ports", "vulnerabilities", "compliance", "malware"]
    #: compliance: a shipped profile's name (never a host path)
    profile: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    ports: str | None = Field(None, pattern=r"^[0-9][0-9,-]{0,200}$")
    paths: list[str] = Field(default_factory=lambda: ["/"], min_length=1, max_length=8)
    engines: list[Engine] = Field(default_factory=lambda: list[Engine](["yara"]), min_length=1)


class ExportArgs(MachineArgs):
    format: Literal["qcow2", "vmdk", "vdi", "vhdx", "ova"]
    snapshot: str | None = Field(None, min_length=1, max_length=64)
    #: a plain file name: the file is written to the lab's exports folder
    file: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    replace: bool = False


class ExecArgs(MachineArgs):
    command: str = Field(min_length=1, max_length=MAX_COMMAND)
    timeout: float = Field(60.0, gt=0, le=3600)


class LinkArgs(Args):
    a: str = Field(min_length=1, max_length=64)
    b: str = Field(min_length=1, max_length=64)
    direction: Direction | None = None


class LinkSetArgs(LinkArgs):
    properties: dict[str, str | float | int | bool] = Field(min_length=1, max_length=16)


class CaptureArgs(Args):
    a: str = Field(min_length=1, max_length=64)
    b: str = Field(min_length=1, max_length=64)


@dataclass(frozen=True)
class Action:
    """One thing the supervisor does: its arguments, whether it changes the lab, its handler."""

    name: str
    args: type[Args]
    mutates: bool
    handler: Callable[[LabControl, Any], Any]
    help: str


def _truncated(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_OUTPUT:
        return text, False
    return text[-MAX_OUTPUT:], True


class LabControl:
    """The actions of one supervised lab (its Lab and, when it has one, its Network)."""

    def __init__(self, lab: Lab, network: Network | None, *,
                 on_down: Callable[[], None]) -> None:
        self.lab = lab
        self.network = network
        self._on_down = on_down
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._captures: dict[frozenset[str], dict[str, Path]] = {}

    def __repr__(self) -> str:
        return f"<LabControl {self.lab.id}>"

    # -- dispatch -------------------------------------------------------
    def run(self, name: str, raw_args: object) -> Any:
        """Check ``raw_args`` against the action's model and run it; errors say what to fix."""
        action = ACTIONS.get(name)
        if action is None:
            raise ConfigError(f"unknown action {name!r}; actions: {', '.join(sorted(ACTIONS))}")
        if raw_args is None:
            raw_args = {}
        if not isinstance(raw_args, dict):
            raise ConfigError(f"{name}: args must be an object, not {type(raw_args).__name__}")
        try:
            args = action.args.model_validate(raw_args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'args'}: {e['msg']}"
                                 for e in exc.errors())
            raise ConfigError(f"{name}: {problems}") from None
        self.lab.log.info("control: %s %s", name, _loggable(args))
        return action.handler(self, args)

    # -- helpers --------------------------------------------------------
    def machine(self, name: str) -> Machine:
        if not is_valid_name(name):
            raise ConfigError(f"machine {name!r}: not a machine name ({NAME_RULE})")
        return self.lab[name]

    def lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def require_network(self) -> Network:
        if self.network is None:
            raise ConfigError(f"lab {self.lab.id} has no network")
        return self.network

    def links(self) -> list[dict[str, Any]]:
        """Every link with its settings per direction and its counters."""
        network = self.network
        if network is None or network.closed:
            return []
        found = []
        for link in network.links:
            counters = link.counters()
            found.append({
                "a": link.a, "b": link.b,
                "a_to_b": {"settings": link.a_to_b.model_dump(mode="json"),
                           "text": describe_impairment(link.a_to_b),
                           "counters": counters["a_to_b"]},
                "b_to_a": {"settings": link.b_to_a.model_dump(mode="json"),
                           "text": describe_impairment(link.b_to_a),
                           "counters": counters["b_to_a"]},
                "captured": frozenset((link.a, link.b)) in self._captures,
            })
        return found


def _loggable(args: Args) -> str:
    data = args.model_dump()
    if isinstance(data.get("command"), str) and len(data["command"]) > 200:
        data["command"] = data["command"][:200] + "..."
    if isinstance(data.get("content_base64"), str):
        data["content_base64"] = f"<{len(data['content_base64'])} base64 characters>"
    return str(data)


# -- handlers ---------------------------------------------------------
def _status(control: LabControl, _: NoArgs) -> dict[str, Any]:
    record = read_lab(control.lab.dir)
    if record is None:
        raise ConfigError(f"lab {control.lab.id}: its folder is gone")
    described = describe_lab(record)
    described["links"] = control.links()
    return described


def _start(control: LabControl, args: MachineArgs) -> dict[str, str]:
    machine = control.machine(args.machine)
    with control.lock(machine.name):
        started = time.monotonic()
        machine.start()
        return {"machine": machine.name, "state": machine.state.value,
                "took": f"{time.monotonic() - started:.1f} s"}


def _stop(control: LabControl, args: StopArgs) -> dict[str, str]:
    machine = control.machine(args.machine)
    with control.lock(machine.name):
        machine.stop(timeout=args.timeout)
        return {"machine": machine.name, "state": machine.state.value}


def _kill(control: LabControl, args: MachineArgs) -> dict[str, str]:
    machine = control.machine(args.machine)
    with control.lock(machine.name):
        machine.kill()
        return {"machine": machine.name, "state": machine.state.value}


def _console(control: LabControl, args: ConsoleArgs) -> dict[str, str]:
    machine = control.machine(args.machine)
    return {"machine": machine.name, "console": machine.console_tail(args.lines)}


def _exec(control: LabControl, args: ExecArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    result = machine.execute(args.command, timeout=args.timeout)
    stdout, cut_out = _truncated(result.stdout)
    stderr, cut_err = _truncated(result.stderr)
    reply: dict[str, Any] = {"machine": machine.name, "status": result.rc, "stdout": stdout,
                             "stderr": stderr}
    if cut_out or cut_err:
        reply["note"] = (f"output cut to its last {MAX_OUTPUT} characters "
                         f"({'stdout' if cut_out else ''}{' and ' if cut_out and cut_err else ''}"
                         f"{'stderr' if cut_err else ''})")
    return reply


def _snapshot_list(control: LabControl, args: MachineArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    tree = machine.snapshots
    return {"machine": machine.name, "current": tree.current, "tree": tree.render(),
            "snapshots": [{"name": n.name, "parent": n.parent, "created": n.created,
                           "size": n.size, "kind": n.kind} for n in tree]}


def _snapshot_take(control: LabControl, args: SnapshotTakeArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    if args.name is not None:
        check_snapshot_name(args.name)
    with control.lock(machine.name):
        node = machine.snapshot(args.name)
    return {"machine": machine.name, "snapshot": node.name, "parent": node.parent,
            "size": node.size}


def _snapshot_restore(control: LabControl, args: SnapshotArgs) -> dict[str, str]:
    machine = control.machine(args.machine)
    check_snapshot_name(args.name)
    with control.lock(machine.name):
        machine.restore(args.name)
    return {"machine": machine.name, "snapshot": args.name, "state": machine.state.value}


def _snapshot_delete(control: LabControl, args: SnapshotDeleteArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    check_snapshot_name(args.name)
    with control.lock(machine.name):
        gone = machine.delete_snapshot(args.name, subtree=args.subtree)
    return {"machine": machine.name, "deleted": gone}


def _file_read(control: LabControl, args: FileReadArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    quoted = shlex.quote(args.path)
    size = machine.execute(f"test -f {quoted} && stat -c %s {quoted}", timeout=30)
    if size.rc != 0 or not size.stdout.strip().isdigit():
        raise ConfigError(f"{machine.name}: {args.path} is not a regular file")
    if int(size.stdout) > MAX_FILE:
        raise ConfigError(f"{machine.name}: {args.path} has {int(size.stdout)} bytes; files "
                          f"copied through the control socket hold at most {MAX_FILE}")
    with tempfile.TemporaryDirectory(dir=control.lab.dir) as scratch:
        local = Path(scratch) / "file"
        with control.lock(machine.name):
            machine.copy_from(args.path, local)
        data = local.read_bytes()[:MAX_FILE]
    return {"machine": machine.name, "path": args.path, "size": len(data),
            "content_base64": base64.b64encode(data).decode()}


def _file_write(control: LabControl, args: FileWriteArgs) -> dict[str, Any]:
    machine = control.machine(args.machine)
    try:
        data = base64.b64decode(args.content_base64, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("content_base64 is not base64") from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"the file has {len(data)} bytes; at most {MAX_FILE} go in at once")
    with tempfile.TemporaryDirectory(dir=control.lab.dir) as scratch:
        local = Path(scratch) / "file"
        local.write_bytes(data)
        with control.lock(machine.name):
            machine.copy_to(local, args.path)
            machine.succeed(f"chmod {args.mode:o} {shlex.quote(args.path)}", timeout=30)
    return {"machine": machine.name, "path": args.path, "size": len(data)}


def _scan(control: LabControl, args: ScanArgs) -> dict[str, Any]:
    from vboxlab.security.session import Scan

    machine = control.machine(args.machine)
    session = Scan()
    with control.lock(machine.name):
        if args.kind == "ports":
            result: Any = session.ports(machine, ports=args.ports)
            passed = True
        elif args.kind == "vulnerabilities":
            result = session.vulnerabilities(machine)
            passed = not result
        elif args.kind == "compliance":
            if args.profile is None:
                raise ConfigError("a compliance scan needs a profile (ssh-baseline, ...)")
            result = session.compliance(machine, args.profile)
            passed = result.passed
        else:
            if any(not p.startswith("/") or "\x00" in p for p in args.paths):
                raise ConfigError("malware scan paths are absolute paths in the machine")
            result = session.malware(machine, args.paths, engines=tuple(args.engines))
            passed = not result
    return {"machine": machine.name, "kind": args.kind, "passed": passed,
            "summary": result.summary(), "table": _truncated(result.table())[0],
            "report": result.to_json()}


def _export(control: LabControl, args: ExportArgs) -> dict[str, Any]:
    from vboxlab.migrate.export import export_machine

    machine = control.machine(args.machine)
    if args.snapshot is not None:
        check_snapshot_name(args.snapshot)
    folder = control.lab.dir / "exports"
    folder.mkdir(mode=0o700, exist_ok=True)
    with control.lock(machine.name):
        done = export_machine(machine, args.format, folder / args.file, snapshot=args.snapshot,
                              replace=args.replace)
    return {"machine": machine.name, "path": str(done.path), "format": done.format,
            "size": done.size, "snapshot": done.snapshot}


def _link_set(control: LabControl, args: LinkSetArgs) -> dict[str, Any]:
    link = control.require_network().link(args.a, args.b)
    link.set(args.direction, **args.properties)
    return {"a": link.a, "b": link.b, "a_to_b": describe_impairment(link.a_to_b),
            "b_to_a": describe_impairment(link.b_to_a)}


def _link_down(control: LabControl, args: LinkArgs) -> dict[str, Any]:
    return _link_set(control, LinkSetArgs(a=args.a, b=args.b, direction=args.direction,
                                          properties={"up": False}))


def _link_up(control: LabControl, args: LinkArgs) -> dict[str, Any]:
    return _link_set(control, LinkSetArgs(a=args.a, b=args.b, direction=args.direction,
                                          properties={"up": True}))


def _links(control: LabControl, _: NoArgs) -> list[dict[str, Any]]:
    control.require_network()
    return control.links()


def _capture_start(control: LabControl, args: CaptureArgs) -> dict[str, str]:
    network = control.require_network()
    link = network.link(args.a, args.b)
    key = frozenset((link.a, link.b))
    if key in control._captures:
        raise ConfigError(f"link {link.a}<->{link.b} is already being captured; stop it first")
    paths = network.start_capture(link.a, link.b, control.lab.dir / "captures")
    control._captures[key] = paths
    return {direction: str(path) for direction, path in paths.items()}


def _capture_stop(control: LabControl, args: CaptureArgs) -> dict[str, Any]:
    network = control.require_network()
    link = network.link(args.a, args.b)
    paths = control._captures.pop(frozenset((link.a, link.b)), None)
    if paths is None:
        raise ConfigError(f"link {link.a}<->{link.b} is not being captured; start a capture "
                          "first")
    network.stop_capture(link.a, link.b)
    return {direction: {"path": str(path), "bytes": path.stat().st_size if path.exists() else 0}
            for direction, path in paths.items()}


def _capture_flows(control: LabControl, args: CaptureArgs) -> dict[str, Any]:
    network = control.require_network()
    link = network.link(args.a, args.b)
    found = sorted(network.flows(link.a, link.b), key=lambda f: -f.bytes)
    return {"a": link.a, "b": link.b, "count": len(found),
            "flows": [{**f.to_dict(), "text": f.describe()} for f in found[:MAX_FLOWS]]}


def _down(control: LabControl, _: NoArgs) -> dict[str, str]:
    control._on_down()
    return {"lab": control.lab.id, "state": "going down"}


ACTIONS: dict[str, Action] = {a.name: a for a in [
    Action("status", NoArgs, False, _status, "the lab, its machines and its links"),
    Action("machine.start", MachineArgs, True, _start, "start a stopped machine"),
    Action("machine.stop", StopArgs, True, _stop, "shut a machine down cleanly"),
    Action("machine.kill", MachineArgs, True, _kill, "pull a machine's plug"),
    Action("machine.console", ConsoleArgs, False, _console, "the tail of a serial console"),
    Action("exec", ExecArgs, True, _exec, "run a shell command in a machine"),
    Action("snapshot.list", MachineArgs, False, _snapshot_list, "a machine's snapshot tree"),
    Action("snapshot.take", SnapshotTakeArgs, True, _snapshot_take, "take a snapshot"),
    Action("snapshot.restore", SnapshotArgs, True, _snapshot_restore, "restore a snapshot"),
    Action("snapshot.delete", SnapshotDeleteArgs, True, _snapshot_delete, "delete a snapshot"),
    Action("file.read", FileReadArgs, False, _file_read,
           f"copy a file (at most {MAX_FILE} bytes) out of a machine"),
    Action("file.write", FileWriteArgs, True, _file_write,
           f"copy a file (at most {MAX_FILE} bytes) into a machine"),
    Action("scan", ScanArgs, False, _scan,
           "a security scan of a machine: ports, vulnerabilities, compliance or malware"),
    Action("machine.export", ExportArgs, True, _export,
           "write a machine's disk (or a snapshot of it) to the lab's exports folder"),
    Action("link.list", NoArgs, False, _links, "links, their settings and counters"),
    Action("link.set", LinkSetArgs, True, _link_set, "change a link's properties"),
    Action("link.down", LinkArgs, True, _link_down, "cut a link"),
    Action("link.up", LinkArgs, True, _link_up, "bring a link back"),
    Action("capture.start", CaptureArgs, True, _capture_start, "capture a link to pcaps"),
    Action("capture.stop", CaptureArgs, True, _capture_stop, "stop a link's capture"),
    Action("capture.flows", CaptureArgs, False, _capture_flows,
           f"the conversations a link's captures hold (the {MAX_FLOWS} largest)"),
    Action("down", NoArgs, True, _down, "stop the lab and remove everything"),
]}
