"""The MCP server driven by the SDK's own client, in process and over stdio: tool schemas,
read-only by default, errors an agent can act on, and a scripted agent session that breaks a
link, sees the ping fail, mends it and sees it pass."""

import os
import re
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client, StdioServerParameters

from vboxlab.control import launcher
from vboxlab.labdirs import find_lab
from vboxlab.mcp_server.tools import build_server

from .helpers import qemu_pids

PAIR = """\
name: pair
nodes:
  a: {}
  b: {}
links:
  - between: [a, b]
"""
READ_ONLY_TOOLS = {"list_labs", "lab_status", "list_links", "machine_console", "snapshot_tree",
                   "validate_topology", "copy_file_out", "capture_summary", "scan"}


def call(server, tool, **arguments):
    """One tool call through an in-process client: (is_error, structured or text)."""
    async def go():
        async with Client(server) as client:
            result = await client.call_tool(tool, arguments)
            text = " ".join(getattr(c, "text", "") for c in result.content)
            return result.is_error, (result.structured_content if not result.is_error
                                     else text)
    return anyio.run(go)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    """A server allowed to change labs, on a lab folder of its own; the lab downed at the end."""
    base = tmp_path_factory.mktemp("mcp") / "labs"
    base.mkdir(mode=0o700)
    server = build_server(base, allow_mutations=True)
    try:
        yield server, base
    finally:
        for lab in launcher.status(base):
            launcher.down(base, lab["id"])
        assert qemu_pids(str(base)) == []


def test_tools_have_schemas_and_only_read_without_permission(tmp_path):
    base = tmp_path / "labs"
    base.mkdir(mode=0o700)

    async def go():
        async with Client(build_server(base)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == READ_ONLY_TOOLS
            assert all(t.output_schema and t.annotations.read_only_hint for t in tools.values())
            assert tools["machine_console"].input_schema["properties"]["lines"]["maximum"] == \
                2000
            refused = await client.call_tool("run_command", {"lab": "x", "machine": "a",
                                                             "command": "id"})
            assert refused.is_error and "run_command" in refused.content[0].text
    anyio.run(go)
    error, checked = call(build_server(base), "validate_topology",
                          topology="nodes: {a: {memory: 1}}\n")
    assert not error and checked == {
        "valid": False,
        "summary": "topology.yaml:1: nodes.a.memory: Input should be greater than or equal "
                   "to 64 (got 1)"}
    error, text = call(build_server(base), "lab_status", lab="nosuch")
    assert error and "no lab 'nosuch'" in text


def test_an_agent_breaks_a_link_sees_the_ping_fail_and_mends_it(agent):
    server, _ = agent
    error, lab = call(server, "lab_up", topology=PAIR, name="pair")
    assert not error, lab
    assert lab["status"] == "up" and [m["name"] for m in lab["machines"]] == ["a", "b"]
    assert call(server, "run_command", lab="pair", machine="a",
                command="ping -c 1 -W 2 b")[1]["status"] == 0
    error, link = call(server, "link_set", lab="pair", a="a", b="b", up=False)
    assert not error and link["a_to_b"]["up"] is False and link["b_to_a"]["up"] is False, link
    failed = call(server, "run_command", lab="pair", machine="a", command="ping -c 1 -W 1 b")
    assert failed[1]["status"] != 0
    error, link = call(server, "link_set", lab="pair", a="a", b="b", up=True, delay="20ms")
    assert link["a_to_b"]["delay_ms"] == 20 and link["a_to_b"]["text"] == "delay 20ms", link
    passed = call(server, "run_command", lab="pair", machine="a", command="ping -c 1 -W 2 b")
    assert passed[1]["status"] == 0
    rtt = float(re.search(r"time=([\d.]+) ms", passed[1]["stdout"]).group(1))
    assert rtt >= 40  # 20 ms each way
    links = call(server, "list_links", lab="pair")[1]["result"]
    assert links[0]["a_to_b"]["counters"]["tx_packets"] > 0


def test_files_go_in_and_out_and_a_capture_is_summarised(agent):
    server, _ = agent
    written = call(server, "copy_file_in", lab="pair", machine="a", path="/root/note.txt",
                   text="from the agent\n", mode=0o600)
    assert written == (False, {"machine": "a", "path": "/root/note.txt", "size": 15})
    assert call(server, "run_command", lab="pair", machine="a",
                command="stat -c %a /root/note.txt")[1]["stdout"] == "600\n"
    error, read = call(server, "copy_file_out", lab="pair", machine="a", path="/root/note.txt")
    assert not error and read["text"] == "from the agent\n" and read["base64"] is None
    error, text = call(server, "copy_file_out", lab="pair", machine="a",
                       path="/bin/busybox")
    assert error and "bytes; files copied through the control socket hold at most" in text
    error, text = call(server, "copy_file_out", lab="pair", machine="a", path="relative")
    assert error and "path" in text
    assert not call(server, "capture_start", lab="pair", a="a", b="b")[0]
    call(server, "run_command", lab="pair", machine="a", command="ping -c 3 -i 0.2 b")
    error, files = call(server, "capture_stop", lab="pair", a="a", b="b")
    assert not error and files["a_to_b"].endswith(".pcap"), files
    error, summary = call(server, "capture_summary", lab="pair", a="a", b="b")
    assert not error and summary["count"] >= 1, summary
    icmp = [f for f in summary["flows"] if f["protocol"] == "icmp"]
    assert icmp and icmp[0]["client_node"] == "a" and icmp[0]["server_node"] == "b", summary
    assert icmp[0]["packets"] >= 6


def test_scans_as_tools(agent):
    server, _ = agent
    error, ports = call(server, "scan", lab="pair", machine="a", kind="ports", ports="22,80")
    assert not error, ports
    assert ports["report"]["open_ports"] == [22] and ports["passed"], ports
    error, rules = call(server, "scan", lab="pair", machine="a", kind="compliance",
                        profile="tiny-baseline")
    assert not error and rules["kind"] == "compliance" and rules["report"]["results"], rules
    error, text = call(server, "scan", lab="pair", machine="a", kind="compliance",
                       profile="../../etc/passwd")
    assert error and "profile" in text


def test_snapshots_errors_and_resources_as_an_agent_sees_them(agent):
    server, base = agent
    assert not call(server, "snapshot_take", lab="pair", machine="b", name="clean")[0]
    call(server, "run_command", lab="pair", machine="b", command="touch /root/broken")
    assert not call(server, "snapshot_restore", lab="pair", machine="b", name="clean")[0]
    gone = call(server, "run_command", lab="pair", machine="b", command="ls /root")[1]
    assert gone["stdout"] == ""
    tree = call(server, "snapshot_tree", lab="pair", machine="b")[1]
    assert tree["current"] == "clean" and "clean" in tree["tree"]
    error, text = call(server, "run_command", lab="pair", machine="b", command="sleep 5",
                       timeout=1)
    assert error and "did not finish" in text, text
    error, text = call(server, "run_command", lab="pair", machine="zz", command="id")
    assert error and "zz" in text
    big = call(server, "run_command", lab="pair", machine="a",
               command="head -c 200000 /dev/zero | tr '\\0' x")[1]
    assert len(big["stdout"]) == 65536 and "cut" in big["note"]

    async def read():
        async with Client(server) as client:
            topology = await client.read_resource("vboxlab://labs/pair/topology")
            console = await client.read_resource("vboxlab://labs/pair/machines/a/console")
            snaps = await client.read_resource("vboxlab://labs/pair/machines/b/snapshots")
            return topology.contents[0].text, console.contents[0].text, snaps.contents[0].text
    topology, console, snaps = anyio.run(read)
    assert topology == PAIR and "Linux version" in console and "clean" in snaps
    tail = call(server, "machine_console", lab="pair", machine="a", lines=5)[1]
    assert tail["machine"] == "a" and 0 < len(tail["console"].splitlines()) <= 5
    lab_log = (base / "pair" / "lab.log").read_text()
    assert "control: exec" in lab_log and "touch /root/broken" in lab_log  # every call, logged
    # a machine that died: the agent is told so
    launcher.client(find_lab(base, "pair")).call("machine.kill", machine="b")
    error, text = call(server, "run_command", lab="pair", machine="b", command="true")
    assert error and "b" in text and ("not running" in text or "stopped" in text or
                                      "crashed" in text), text


def test_the_stdio_server_serves_the_same_labs_and_the_latest_report(agent, tmp_path):
    _, base = agent
    for name, stamp in (("run-1", 100), ("run-2", 200)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(f'{{"run": "{name}"}}')
        os.utime(tmp_path / name / "report.json", (stamp, stamp))

    async def go():
        params = StdioServerParameters(command=sys.executable,
                                       args=["-m", "vboxlab.cli", "mcp", "--lab-dir", str(base),
                                             "--reports", str(tmp_path)])
        async with Client(params) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            labs = await client.call_tool("list_labs", {})
            report = await client.read_resource("vboxlab://reports/latest")
            return tools, labs.structured_content, report.contents[0].text
    tools, labs, report = anyio.run(go)
    assert tools == READ_ONLY_TOOLS
    assert [lab["id"] for lab in labs["result"]] == ["pair"]
    assert report == '{"run": "run-2"}'


def test_the_lab_goes_down_as_a_tool_and_leaves_nothing(agent):
    server, base = agent
    assert call(server, "lab_down", lab="pair") == (False, {"lab": "pair", "what": "up"})
    assert call(server, "list_labs")[1] == {"result": []}
    assert qemu_pids(str(base)) == []


def test_the_readme_lists_every_tool_the_server_has(tmp_path):
    base = tmp_path / "labs"
    base.mkdir(mode=0o700)

    async def go():
        async with Client(build_server(base, allow_mutations=True)) as client:
            return {t.name: t.description.splitlines()[0] for t in
                    (await client.list_tools()).tools}
    tools = anyio.run(go)
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("<!-- mcp-tools -->")[1]
    listed = dict(re.findall(r"^\| `(\w+)` \| (?:read|change) \| (.+) \|$", section, re.M))
    assert listed == tools
