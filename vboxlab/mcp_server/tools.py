"""vboxlab's MCP server: labs, machines, snapshots and links as tools for AI agents.

Every tool goes through the library functions the CLI and the dashboard use:
:mod:`vboxlab.control.launcher` (``up``, ``status``, ``down``) and the
supervisor's control socket (:mod:`vboxlab.control.actions`, whose argument
models check every value and which log every call with its arguments to the
lab's log). The server acts only on labs under its lab folder, never on the
host. Tools that change anything are left out unless the server was started
with ``allow_mutations``; each tool's result is a typed model, so the client
gets structured content with a schema. Command output is cut (with a note) to
``MAX_OUTPUT`` characters per stream.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from vboxlab import __version__
from vboxlab.control import launcher
from vboxlab.errors import VboxlabError
from vboxlab.labdirs import find_lab
from vboxlab.labstatus import TOPOLOGY_COPY
from vboxlab.names import check_name

log = logging.getLogger(__name__)
MAX_OUTPUT = 64 << 10
MAX_TOPOLOGY = 64 << 10
T = TypeVar("T")


class MachineInfo(BaseModel):
    name: str
    provider: str
    state: str
    template: str | None = None


class LabInfo(BaseModel):
    id: str
    status: str = Field(description="up (served by a supervisor), session, kept or dead")
    machines: list[MachineInfo]


class LinkDirection(BaseModel):
    text: str = Field(description="the settings in words, e.g. 'delay 10ms, loss 1%'")
    delay_ms: float
    jitter_ms: float
    loss_percent: float
    rate_bits: float | None = Field(description="bits per second, None: unlimited")
    up: bool
    counters: dict[str, int]


class LinkInfo(BaseModel):
    a: str
    b: str
    a_to_b: LinkDirection
    b_to_a: LinkDirection


class CommandResult(BaseModel):
    machine: str
    status: int = Field(description="the command's exit status")
    stdout: str
    stderr: str
    note: str | None = Field(None, description="set when output was cut")


class SnapshotInfo(BaseModel):
    name: str
    parent: str | None
    created: float
    size: int


class SnapshotTree(BaseModel):
    machine: str
    current: str | None
    tree: str
    snapshots: list[SnapshotInfo]


class Done(BaseModel):
    lab: str
    what: str


class TopologyCheck(BaseModel):
    valid: bool
    summary: str = Field(description="nodes, interfaces, addresses and links, or the error")


class FileContent(BaseModel):
    path: str
    size: int
    text: str | None = Field(description="the content, when it is UTF-8 text")
    base64: str | None = Field(description="the content, when it is not text")


class FileWritten(BaseModel):
    machine: str
    path: str
    size: int


class CaptureFiles(BaseModel):
    a_to_b: str
    b_to_a: str


class FlowInfo(BaseModel):
    text: str = Field(description="e.g. 'tcp http a:41234 -> b:80: 6/4 packets, ...'")
    protocol: str
    client: str
    client_port: int
    server: str
    server_port: int
    client_node: str | None
    server_node: str | None
    packets: int
    bytes: int


class CaptureSummary(BaseModel):
    a: str
    b: str
    count: int = Field(description="conversations seen (the largest 50 are listed)")
    flows: list[FlowInfo]


class ScanReport(BaseModel):
    machine: str
    kind: str
    passed: bool = Field(description="no open-port surprise, no finding, every rule passed")
    summary: str
    table: str
    report: dict[str, Any] = Field(description="the scan's full result (as `vboxlab scan "
                                   "--json` prints it)")


class ConsoleTail(BaseModel):
    machine: str
    console: str


def _cut(text: str) -> tuple[str, bool]:
    if len(text) <= MAX_OUTPUT:
        return text, False
    return text[-MAX_OUTPUT:], True


class LabTools:
    """The operations behind the tools, on the labs under ``base``."""

    def __init__(self, base: Path, reports: Path | None = None) -> None:
        self.base = base
        self.reports = reports

    def latest_report(self) -> str:
        """``report.json`` of the newest lab report under the reports folder (or in it)."""
        if self.reports is None:
            raise ResourceError("the server was started without --reports DIR")
        found = [p for p in [self.reports / "report.json",
                             *self.reports.glob("*/report.json")] if p.is_file()]
        if not found:
            raise ResourceError(f"no lab report (report.json) in {self.reports} or its "
                                "folders; write one with pytest --lab-report DIR")
        newest = max(found, key=lambda p: p.stat().st_mtime)
        if newest.stat().st_size > 16 << 20:
            raise ResourceError(f"{newest} is over 16 MiB")
        return newest.read_text(errors="replace")

    def _up_lab(self, lab: str) -> Any:
        check_name(lab, "lab")
        record = find_lab(self.base, lab)
        if record.status != "up":
            raise ToolError(f"lab {lab} is {record.status}, not up: its machines can be "
                            "driven only while its supervisor runs (lab_up)")
        return launcher.client(record)

    def labs(self) -> list[LabInfo]:
        return [_lab_info(lab) for lab in launcher.status(self.base)]

    def status(self, lab: str) -> LabInfo:
        return _lab_info(self._up_lab(lab).call("status"))

    def links(self, lab: str) -> list[LinkInfo]:
        return [_link_info(link) for link in self._up_lab(lab).call("link.list")]

    def console(self, lab: str, machine: str, lines: int) -> ConsoleTail:
        reply = self._up_lab(lab).call("machine.console", machine=machine, lines=lines)
        return ConsoleTail(machine=reply["machine"], console=_cut(reply["console"])[0])

    def snapshots(self, lab: str, machine: str) -> SnapshotTree:
        reply = self._up_lab(lab).call("snapshot.list", machine=machine)
        return SnapshotTree(machine=reply["machine"], current=reply["current"],
                            tree=reply["tree"],
                            snapshots=[SnapshotInfo(name=s["name"], parent=s["parent"],
                                                    created=s["created"], size=s["size"])
                                       for s in reply["snapshots"]])

    def check_topology(self, topology: str) -> TopologyCheck:
        from vboxlab.net import load_topology
        from vboxlab.net.plan import describe

        with self._topology_file(topology) as path:
            try:
                return TopologyCheck(valid=True, summary=describe(load_topology(path)))
            except VboxlabError as exc:
                return TopologyCheck(valid=False, summary=str(exc).replace(str(path),
                                                                           "topology.yaml"))

    @staticmethod
    @contextlib.contextmanager
    def _topology_file(topology: str) -> Iterator[Path]:
        """The YAML text in a private temporary file (size-limited) while it is read."""
        if len(topology.encode()) > MAX_TOPOLOGY:
            raise ToolError(f"the topology is over {MAX_TOPOLOGY} bytes")
        with tempfile.TemporaryDirectory(prefix="vboxlab-mcp-") as folder:
            path = Path(folder) / "topology.yaml"
            path.write_text(topology)
            yield path

    # -- resources --------------------------------------------------------
    def lab_file(self, lab: str, *parts: str) -> str:
        """A text file of a lab's folder (topology, console), names checked, size-limited."""
        check_name(lab, "lab")
        for part in parts[:-1]:
            check_name(part, "machine")
        record = find_lab(self.base, lab)
        path = record.dir.joinpath(*parts)
        if not path.is_file():
            raise ResourceError(f"lab {lab} has no {'/'.join(parts)}")
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - MAX_OUTPUT))
            return handle.read().decode(errors="replace")

    def read_file(self, lab: str, machine: str, path: str) -> FileContent:
        reply = self._up_lab(lab).call("file.read", machine=machine, path=path)
        data = base64.b64decode(reply["content_base64"])
        try:
            return FileContent(path=path, size=len(data), text=data.decode(), base64=None)
        except UnicodeDecodeError:
            return FileContent(path=path, size=len(data), text=None,
                               base64=reply["content_base64"])

    def capture_flows(self, lab: str, a: str, b: str) -> CaptureSummary:
        reply = self._up_lab(lab).call("capture.flows", a=a, b=b)
        return CaptureSummary(a=reply["a"], b=reply["b"], count=reply["count"], flows=[
            FlowInfo(text=f["text"], protocol=f["protocol"], client=f["client"],
                     client_port=f["client_port"], server=f["server"],
                     server_port=f["server_port"], client_node=f["client_node"],
                     server_node=f["server_node"],
                     packets=f["packets_to_server"] + f["packets_to_client"],
                     bytes=f["bytes_to_server"] + f["bytes_to_client"])
            for f in reply["flows"]])

    def scan(self, lab: str, machine: str, kind: str, profile: str | None, ports: str | None,
             paths: list[str] | None) -> ScanReport:
        args: dict[str, Any] = {"machine": machine, "kind": kind, "profile": profile,
                                "ports": ports}
        if paths:
            args["paths"] = paths
        reply = self._up_lab(lab).call("scan", reply_timeout=900, **args)
        return ScanReport(**reply)

    # -- mutations --------------------------------------------------------
    def write_file(self, lab: str, machine: str, path: str, text: str | None,
                   content_base64: str | None, mode: int) -> FileWritten:
        if (text is None) == (content_base64 is None):
            raise ToolError("give the content as text or as base64, one of them")
        encoded = content_base64 if text is None else base64.b64encode(text.encode()).decode()
        reply = self._up_lab(lab).call("file.write", machine=machine, path=path,
                                       content_base64=encoded, mode=mode)
        return FileWritten(machine=reply["machine"], path=reply["path"], size=reply["size"])

    def capture(self, lab: str, a: str, b: str, start: bool) -> CaptureFiles:
        reply = self._up_lab(lab).call("capture.start" if start else "capture.stop", a=a, b=b)
        paths = {k: (v if isinstance(v, str) else v["path"]) for k, v in reply.items()}
        return CaptureFiles(a_to_b=paths["a_to_b"], b_to_a=paths["b_to_a"])

    def up(self, topology: str, name: str) -> LabInfo:
        check_name(name, "lab")
        with self._topology_file(topology) as path:
            launcher.up(path, self.base, name=name)
        return self.status(name)

    def down(self, lab: str) -> Done:
        check_name(lab, "lab")
        return Done(lab=lab, what=launcher.down(self.base, lab))

    def execute(self, lab: str, machine: str, command: str, timeout: float) -> CommandResult:
        reply = self._up_lab(lab).call("exec", machine=machine, command=command,
                                       timeout=timeout)
        stdout, cut_out = _cut(reply["stdout"])
        stderr, cut_err = _cut(reply["stderr"])
        note = reply.get("note")
        if cut_out or cut_err:
            note = f"output cut to its last {MAX_OUTPUT} characters per stream"
        return CommandResult(machine=reply["machine"], status=reply["status"], stdout=stdout,
                             stderr=stderr, note=note)

    def snapshot_take(self, lab: str, machine: str, name: str | None) -> Done:
        reply = self._up_lab(lab).call("snapshot.take", machine=machine, name=name)
        return Done(lab=lab, what=f"{machine}: took snapshot {reply['snapshot']}")

    def snapshot_restore(self, lab: str, machine: str, name: str) -> Done:
        self._up_lab(lab).call("snapshot.restore", machine=machine, name=name)
        return Done(lab=lab, what=f"{machine} restored to {name}")

    def link_set(self, lab: str, a: str, b: str, direction: str | None,
                 properties: dict[str, Any]) -> LinkInfo:
        if not properties:
            raise ToolError("give at least one of delay, jitter, loss, rate, up")
        reply = self._up_lab(lab).call("link.set", a=a, b=b, direction=direction,
                                       properties=properties)
        return next(link for link in self.links(lab) if {link.a, link.b} == {reply["a"],
                                                                              reply["b"]})


def _lab_info(lab: dict[str, Any]) -> LabInfo:
    return LabInfo(id=lab["id"], status=lab["status"], machines=[
        MachineInfo(name=m["name"], provider=str(m.get("provider") or "qemu"),
                    state=str(m.get("state") or ("running" if m.get("running") else "off")),
                    template=m.get("template")) for m in lab.get("machines", [])])


def _link_info(link: dict[str, Any]) -> LinkInfo:
    def direction(data: dict[str, Any]) -> LinkDirection:
        settings = data.get("settings", {})
        return LinkDirection(text=str(data.get("text", "")),
                             delay_ms=float(settings.get("delay") or 0) * 1000,
                             jitter_ms=float(settings.get("jitter") or 0) * 1000,
                             loss_percent=float(settings.get("loss") or 0) * 100,
                             rate_bits=settings.get("rate"), up=bool(settings.get("up", True)),
                             counters={k: int(v) for k, v in data.get("counters", {}).items()})
    return LinkInfo(a=link["a"], b=link["b"], a_to_b=direction(link["a_to_b"]),
                    b_to_a=direction(link["b_to_a"]))


def _in_thread(function: Callable[..., T]) -> Callable[..., Any]:
    """Run a blocking library call off the event loop; vboxlab errors become tool errors."""

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))
        except VboxlabError as exc:
            raise ToolError(str(exc)) from None
    return wrapper


PATHS = Field(None, description="malware: folders to scan (default /)")
READ_ONLY = ToolAnnotations(readOnlyHint=True, destructiveHint=False, openWorldHint=False)
CHANGES = ToolAnnotations(readOnlyHint=False, destructiveHint=True, openWorldHint=False)


def build_server(base: Path, *, allow_mutations: bool = False,
                 reports: Path | None = None) -> MCPServer:
    """The MCP server for the labs under ``base`` (mutating tools only when allowed);
    ``reports``: where lab reports are written (``pytest --lab-report``)."""
    tools = LabTools(base, reports)
    server: MCPServer = MCPServer(
        "vboxlab", version=__version__, log_level="WARNING",
        instructions="Labs of virtual machines and simulated networks. List labs, read "
        "their machines, links, consoles and snapshot trees; with mutations allowed, bring "
        "a topology up, run commands, change links, take and restore snapshots.")

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def list_labs() -> list[LabInfo]:
        """Every lab under the server's lab folder, with its machines."""
        return tools.labs()

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def lab_status(lab: str) -> LabInfo:
        """One up lab: its machines and their states."""
        return tools.status(lab)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def list_links(lab: str) -> list[LinkInfo]:
        """An up lab's links: settings (delay, loss, rate, up) and counters per direction."""
        return tools.links(lab)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def machine_console(lab: str, machine: str,
                        lines: int = Field(50, ge=1, le=2000)) -> ConsoleTail:
        """The last lines of a machine's serial console."""
        return tools.console(lab, machine, lines)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def snapshot_tree(lab: str, machine: str) -> SnapshotTree:
        """A machine's snapshots as a tree (* marks the current state) and as a list."""
        return tools.snapshots(lab, machine)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def copy_file_out(lab: str, machine: str,
                      path: str = Field(description="absolute path in the machine")
                      ) -> FileContent:
        """Read a file (at most 512 KiB) out of a lab machine: text, or base64 if binary."""
        return tools.read_file(lab, machine, path)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def capture_summary(lab: str, a: str, b: str) -> CaptureSummary:
        """The conversations a link's capture holds (protocol, ends, packets, bytes)."""
        return tools.capture_flows(lab, a, b)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def scan(lab: str, machine: str,
             kind: Literal["ports", "vulnerabilities", "compliance", "malware"],
             profile: str | None = Field(None, description="compliance: a profile name, "
                                         "e.g. ssh-baseline"),
             ports: str | None = Field(None, description="ports: e.g. 22,80 or 1-1024"),
             paths: list[str] | None = PATHS) -> ScanReport:
        """Scan a lab machine: open ports, vulnerable packages, a compliance profile, or YARA."""
        return tools.scan(lab, machine, kind, profile, ports, paths)

    @server.tool(annotations=READ_ONLY)
    @_in_thread
    def validate_topology(topology: str = Field(description="topology YAML text")
                          ) -> TopologyCheck:
        """Check a topology (YAML text): its plan, or the error naming the line and field."""
        return tools.check_topology(topology)

    @server.resource("vboxlab://labs/{lab}/topology", mime_type="application/yaml")
    def lab_topology(lab: str) -> str:
        """The topology YAML an up lab was started from."""
        return _resource(lambda: tools.lab_file(lab, TOPOLOGY_COPY))

    @server.resource("vboxlab://labs/{lab}/machines/{machine}/console", mime_type="text/plain")
    def machine_console_log(lab: str, machine: str) -> str:
        """A machine's serial console log (its last 64 KiB)."""
        return _resource(lambda: tools.lab_file(lab, machine, "console.log"))

    @server.resource("vboxlab://labs/{lab}/machines/{machine}/snapshots",
                     mime_type="text/plain")
    def machine_snapshots(lab: str, machine: str) -> str:
        """A machine's snapshot tree as text."""
        return _resource(lambda: tools.snapshots(lab, machine).tree)

    @server.resource("vboxlab://reports/latest", mime_type="application/json")
    def latest_report() -> str:
        """The newest lab report's report.json (tests, outcomes, machines, links)."""
        return _resource(tools.latest_report)

    if allow_mutations:
        _add_mutations(server, tools)
    return server


def _resource(read: Callable[[], str]) -> str:
    try:
        return read()
    except VboxlabError as exc:
        raise ResourceError(str(exc)) from None


def _add_mutations(server: MCPServer, tools: LabTools) -> None:
    @server.tool(annotations=CHANGES)
    @_in_thread
    def lab_up(topology: str = Field(description="topology YAML text"),
               name: str = Field(description="the lab's name (lowercase, digits, dashes)")
               ) -> LabInfo:
        """Bring a topology up as a long-lived lab and wait until its machines answer."""
        return tools.up(topology, name)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def lab_down(lab: str) -> Done:
        """Stop a lab and remove everything it made."""
        return tools.down(lab)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def run_command(lab: str, machine: str,
                    command: str = Field(min_length=1, max_length=65536),
                    timeout: float = Field(60.0, gt=0, le=600)) -> CommandResult:
        """Run a shell command in a lab machine (never on the host); exit status and output."""
        return tools.execute(lab, machine, command, timeout)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def copy_file_in(lab: str, machine: str,
                     path: str = Field(description="absolute path in the machine"),
                     text: str | None = None, content_base64: str | None = None,
                     mode: int = Field(0o644, ge=0, le=0o7777)) -> FileWritten:
        """Write a file (at most 512 KiB, as text or base64) into a lab machine."""
        return tools.write_file(lab, machine, path, text, content_base64, mode)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def capture_start(lab: str, a: str, b: str) -> CaptureFiles:
        """Start capturing the link between nodes a and b (a pcap per direction)."""
        return tools.capture(lab, a, b, start=True)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def capture_stop(lab: str, a: str, b: str) -> CaptureFiles:
        """Stop a link's capture (its files stay; capture_summary reads them)."""
        return tools.capture(lab, a, b, start=False)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def snapshot_take(lab: str, machine: str, name: str | None = None) -> Done:
        """Snapshot a running machine (memory, devices, disk)."""
        return tools.snapshot_take(lab, machine, name)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def snapshot_restore(lab: str, machine: str, name: str) -> Done:
        """Bring a machine back to a snapshot."""
        return tools.snapshot_restore(lab, machine, name)

    @server.tool(annotations=CHANGES)
    @_in_thread
    def link_set(lab: str, a: str, b: str,
                 direction: Literal["a_to_b", "b_to_a"] | None = None,
                 delay: str | None = Field(None, description="e.g. 30ms"),
                 jitter: str | None = Field(None, description="e.g. 5ms"),
                 loss: str | None = Field(None, description="e.g. 2%"),
                 rate: str | None = Field(None, description="e.g. 10mbit"),
                 up: bool | None = Field(None, description="false cuts the link")) -> LinkInfo:
        """Change a link between nodes a and b (both directions unless one is given)."""
        properties = {k: v for k, v in (("delay", delay), ("jitter", jitter), ("loss", loss),
                                        ("rate", rate), ("up", up)) if v is not None}
        return tools.link_set(lab, a, b, direction, properties)
