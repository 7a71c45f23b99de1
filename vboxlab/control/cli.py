"""``vboxlab up/down/status`` and the commands that act on an up lab through its control socket."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from vboxlab.bringup import Board, terminal
from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.control.launcher import client, down, status, up
from vboxlab.labdirs import find_lab
from vboxlab.tables import print_table


def _call(lab_dir: str | None, lab: str, action: str, **args: Any) -> Any:
    return client(find_lab(lab_base(lab_dir), lab)).call(action, **args)


@click.command("up")
@click.argument("topology_file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", default=None, help="The lab's name (default: the topology's name)")
@click.option("--seed", type=int, default=None,
              help="Seed of the links' random behaviour (default: drawn and shown)")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default="auto",
              show_default=True, help="QEMU accelerator")
@click.option("--channel", type=click.Choice(["auto", "ssh"]), default="auto", show_default=True,
              help="Command channel: the template's guest agent where it has one, or SSH")
@click.option("--boot-timeout", type=float, default=120.0, show_default=True,
              help="Seconds each machine may take to answer")
@click.option("--parallel", type=int, default=None,
              help="How many VMs may boot at once (default: the host's cores, or fewer if "
                   "free memory holds fewer)")
@click.option("--until-pid", type=int, default=None,
              help="Take the lab down when this process ends (CI jobs, test suites)")
@lab_dir_option
def up_command(topology_file: Path, name: str | None, seed: int | None, accel: str,
               channel: str, boot_timeout: float, parallel: int | None,
               until_pid: int | None, lab_dir: str | None) -> None:
    """Start a lab from a topology and keep it running after this command returns."""
    stream = terminal()
    board = Board(stream) if stream is not None else None

    def machine_step(machine: str, state: str, at: float) -> None:
        if board is not None:  # a live line per machine
            board.update(machine, state, at)
        elif state in ("answering", "configured", "failed"):
            click.echo(f"  {machine} {state} at {at:.1f} s", err=True)

    ready = up(topology_file, lab_base(lab_dir), name=name, seed=seed, accel=accel,
               channel=channel, boot_timeout=boot_timeout, parallel=parallel,
               until_pid=until_pid,
               progress=lambda text: click.echo(f"  {text}", err=True), on_machine=machine_step)
    where = f" --lab-dir {lab_dir}" if lab_dir else ""
    click.echo(f"lab {ready['lab']} is up in {ready['took']} s: "
               f"{', '.join(ready['machines'])} (seed {ready['seed']})")
    click.echo(f"  status: vboxlab status {ready['lab']}{where}")
    click.echo(f"  stop:   vboxlab down {ready['lab']}{where}")


@click.command("down")
@click.argument("lab")
@lab_dir_option
def down_command(lab: str, lab_dir: str | None) -> None:
    """Stop a lab started with `vboxlab up` and remove everything it made."""
    was = down(lab_base(lab_dir), lab)
    click.echo(f"lab {lab} ({was}) is down and removed")


def _uptime(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _ssh_command(lab: dict[str, Any], machine: dict[str, Any], lab_dir: str | None) -> str:
    if machine.get("ssh") is None or machine.get("state") != "running":
        return "-"
    return f"vboxlab ssh {lab['id']} {machine['name']}" + (f" --lab-dir {lab_dir}"
                                                          if lab_dir else "")


def _print_lab(lab: dict[str, Any], lab_dir: str | None) -> None:
    click.echo(f"lab {lab['id']}: {lab['status']}"
               + (f", topology {lab['topology']} (seed {lab['seed']})" if lab.get("topology")
                  else "") + f"; {lab['folder']}")
    if lab.get("error"):
        click.echo(f"  {lab['error']}")
    print_table(["machine", "state", "template", "provider", "cpus", "memory", "uptime",
                 "snapshots", "reach it"],
                [[m["name"], m["state"],
                  f"{m['template']}@{m['version']}" if m.get("template") else "-",
                  m["provider"], str(m.get("cpus") or "-"),
                  f"{m['memory']} MiB" if m.get("memory") else "-", _uptime(m.get("uptime")),
                  str(len(m["snapshots"])), _ssh_command(lab, m, lab_dir)]
                 for m in lab["machines"]])
    if lab.get("links"):
        rows = []
        for link in lab["links"]:
            for direction, (src, dst) in (("a_to_b", (link["a"], link["b"])),
                                          ("b_to_a", (link["b"], link["a"]))):
                side = link[direction]
                counters = side["counters"]
                drops = sum(v for k, v in counters.items() if k.startswith("drop_"))
                up_now = side["settings"].get("up", True)
                rows.append([f"{src} -> {dst}", "up" if up_now else "DOWN",
                             side["text"] or "clean", str(counters.get("tx_packets", 0)),
                             str(counters.get("tx_bytes", 0)), str(drops)])
        print_table(["link", "state", "properties", "packets out", "bytes out", "drops"],
                    rows)


@click.command("status")
@click.argument("lab", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the labs as JSON")
@lab_dir_option
def status_command(lab: str | None, as_json: bool, lab_dir: str | None) -> None:
    """List labs (up, session, kept, dead) with their machines, states and links."""
    labs = status(lab_base(lab_dir), lab)
    if as_json:
        click.echo(json.dumps(labs, indent=2))
        return
    if not labs:
        click.echo(f"no labs in {lab_base(lab_dir)}")
        return
    if lab is None:
        print_table(["lab", "status", "topology", "machines", "created"],
                    [[item["id"], item["status"], item.get("topology") or "-",
                      ", ".join(f"{m['name']} ({m['state']})" for m in item["machines"]) or "-",
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item["created"]))
                      if item.get("created") else "-"] for item in labs])
        return
    _print_lab(labs[0], lab_dir)


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("lab")
@click.argument("machine")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds the command may run")
@lab_dir_option
def exec_command(lab: str, machine: str, command: tuple[str, ...], timeout: float,
                 lab_dir: str | None) -> None:
    """Run a shell command in a machine of an up lab; exit with its status."""
    result = _call(lab_dir, lab, "exec", machine=machine, command=" ".join(command),
                   timeout=timeout)
    sys.stdout.write(result["stdout"])
    sys.stderr.write(result["stderr"])
    if result.get("note"):
        click.echo(f"vboxlab: {result['note']}", err=True)
    sys.exit(result["status"] if 0 <= result["status"] < 256 else 1)


@click.group("machine")
def machine_group() -> None:
    """Start, stop or kill a machine of an up lab, or read its console."""


def _machine_action(action: str, help_text: str) -> None:
    @machine_group.command(action, help=help_text)
    @click.argument("lab")
    @click.argument("machine")
    @lab_dir_option
    def command(lab: str, machine: str, lab_dir: str | None) -> None:
        result = _call(lab_dir, lab, f"machine.{action}", machine=machine)
        click.echo(f"{result['machine']}: {result['state']}"
                   + (f" (in {result['took']})" if result.get("took") else ""))


_machine_action("start", "Start a stopped machine and wait until it answers.")
_machine_action("stop", "Shut a machine down cleanly.")
_machine_action("kill", "Pull a machine's plug.")


@machine_group.command("console")
@click.argument("lab")
@click.argument("machine")
@click.option("--lines", type=int, default=50, show_default=True)
@lab_dir_option
def console_command(lab: str, machine: str, lines: int, lab_dir: str | None) -> None:
    """Print the tail of a machine's serial console."""
    click.echo(_call(lab_dir, lab, "machine.console", machine=machine, lines=lines)["console"])


@click.group("link")
def link_group() -> None:
    """Show and change the links of an up lab."""


@link_group.command("list")
@click.argument("lab")
@lab_dir_option
def link_list(lab: str, lab_dir: str | None) -> None:
    """The links with their properties and counters."""
    _print_lab({**status(lab_base(lab_dir), lab)[0], "machines": []}, lab_dir)


def _parse_properties(pairs: tuple[str, ...]) -> dict[str, str | bool]:
    properties: dict[str, str | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: write PROPERTY=VALUE, like delay=20ms",
                                     param_hint="PROPERTY=VALUE")
        properties[key.strip()] = value.strip()
    return properties


_direction = click.option("--direction", type=click.Choice(["a_to_b", "b_to_a"]), default=None,
                          help="Only one direction (default: both)")


@link_group.command("set")
@click.argument("lab")
@click.argument("a")
@click.argument("b")
@click.argument("properties", nargs=-1, required=True)
@_direction
@lab_dir_option
def link_set(lab: str, a: str, b: str, properties: tuple[str, ...], direction: str | None,
             lab_dir: str | None) -> None:
    """Change a link: PROPERTY=VALUE in the topology's units (delay=20ms loss=1% rate=10mbit)."""
    result = _call(lab_dir, lab, "link.set", a=a, b=b, direction=direction,
                   properties=_parse_properties(properties))
    click.echo(f"{result['a']} -> {result['b']}: {result['a_to_b'] or 'clean'}")
    click.echo(f"{result['b']} -> {result['a']}: {result['b_to_a'] or 'clean'}")


def _link_switch(action: str, help_text: str) -> None:
    @link_group.command(action, help=help_text)
    @click.argument("lab")
    @click.argument("a")
    @click.argument("b")
    @_direction
    @lab_dir_option
    def command(lab: str, a: str, b: str, direction: str | None, lab_dir: str | None) -> None:
        _call(lab_dir, lab, f"link.{action}", a=a, b=b, direction=direction)
        click.echo(f"link {a}<->{b} {action}" + (f" ({direction})" if direction else ""))


_link_switch("down", "Cut a link (a partition).")
_link_switch("up", "Bring a cut link back.")


@click.group("capture")
def capture_group() -> None:
    """Capture a link of an up lab to pcap files."""


@capture_group.command("start")
@click.argument("lab")
@click.argument("a")
@click.argument("b")
@lab_dir_option
def capture_start(lab: str, a: str, b: str, lab_dir: str | None) -> None:
    """Start capturing both directions of a link."""
    paths = _call(lab_dir, lab, "capture.start", a=a, b=b)
    for path in paths.values():
        click.echo(path)


@capture_group.command("stop")
@click.argument("lab")
@click.argument("a")
@click.argument("b")
@lab_dir_option
def capture_stop(lab: str, a: str, b: str, lab_dir: str | None) -> None:
    """Stop a link's capture and print its files."""
    files = _call(lab_dir, lab, "capture.stop", a=a, b=b)
    for info in files.values():
        click.echo(f"{info['path']} ({info['bytes']} bytes)")


COMMANDS = [up_command, down_command, status_command, exec_command, machine_group, link_group,
            capture_group]
