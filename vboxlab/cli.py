"""The ``vboxlab`` command line: parsing and printing over the library's objects."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import click

from vboxlab import __version__
from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.control.launcher import client
from vboxlab.control.protocol import ControlClient
from vboxlab.doctor import run_checks
from vboxlab.errors import ConfigError, VboxlabError
from vboxlab.inventory import lab_inventory, render_inventory
from vboxlab.labdirs import clean as clean_labs
from vboxlab.labdirs import find_lab, kept_machine, list_labs, release_machine
from vboxlab.machine import Machine
from vboxlab.net import load_topology
from vboxlab.net.plan import describe
from vboxlab.sshconfig import ssh_config_of_record
from vboxlab.tables import print_table


class VboxlabClickError(click.ClickException):
    """A vboxlab error as the command line shows it: one line, exit status 2."""

    exit_code = 2

    def show(self, file: object = None) -> None:
        click.echo(f"vboxlab: error: {self.message}", err=True)


class _Commands(click.Group):
    """Every command's vboxlab errors become one clear line (no traceback)."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except VboxlabError as exc:
            raise VboxlabClickError(str(exc)) from None


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="vboxlab")
def main() -> None:
    """vboxlab: labs of real machines for pytest."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON")
def doctor(as_json: bool) -> None:
    """Say what this host can do, and how to fix what is missing."""
    checks = run_checks()
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        print_table(["check", "status", "detail", "fix"],
                    [[c.name, "ok" if c.ok else ("MISSING" if c.essential else "no"), c.detail,
                      c.fix] for c in checks])
    if any(c.essential and not c.ok for c in checks):
        sys.exit(1)


@main.command()
@lab_dir_option
def labs(lab_dir: str | None) -> None:
    """List labs that are running or kept."""
    records = list_labs(lab_base(lab_dir))
    if not records:
        click.echo(f"no labs in {lab_base(lab_dir)}")
        return
    rows = []
    for record in records:
        owner = f"pid {record.owner_pid} " + ("alive" if record.owner_alive else "dead")
        machines = ", ".join(f"{n} ({'running' if m.get('running') else 'off'})"
                             for n, m in record.machines.items()) or "-"
        rows.append([record.id, owner, "yes" if record.kept else "no", machines])
    print_table(["lab", "owner", "kept", "machines"], rows)


@main.command(context_settings={"ignore_unknown_options": True})
@click.argument("lab_id")
@click.argument("vm_name")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@lab_dir_option
def ssh(lab_id: str, vm_name: str, command: tuple[str, ...], lab_dir: str | None) -> None:
    """Open a shell (or run COMMAND) in a VM of a kept or running lab."""
    facts = ssh_config_of_record(find_lab(lab_base(lab_dir), lab_id), vm_name)
    ssh_bin = shutil.which("ssh")
    if ssh_bin is None:
        raise click.ClickException("ssh not found; install it with: apt-get install "
                                   "openssh-client")
    argv = [ssh_bin, "-i", str(facts.identity_file), "-p", str(facts.port),
            "-o", f"UserKnownHostsFile={facts.known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            f"{facts.user}@{facts.host}", *command]
    os.execv(ssh_bin, argv)  # noqa: S606 - argv list, no shell


@main.command("ssh-config")
@click.argument("lab_id")
@click.argument("vm_names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="The facts as JSON instead")
@lab_dir_option
def ssh_config(lab_id: str, vm_names: tuple[str, ...], as_json: bool,
               lab_dir: str | None) -> None:
    """Print an OpenSSH config block per running machine (all, or VM_NAMES) of a lab:
    `ssh -F FILE VM`, scp, rsync -e and Ansible take it."""
    record = find_lab(lab_base(lab_dir), lab_id)
    names = list(vm_names) or sorted(n for n, i in record.machines.items()
                                     if i.get("running") and isinstance(i.get("ssh"), dict))
    if not names:
        raise click.ClickException(f"lab {lab_id} has no running machine with SSH")
    facts = [ssh_config_of_record(record, name) for name in names]
    if as_json:
        click.echo(json.dumps([f.as_dict() for f in facts], indent=2))
    else:
        click.echo("\n".join(f.as_openssh() for f in facts), nl=False)


@main.command()
@click.argument("lab_id")
@click.option("--format", "fmt", type=click.Choice(["ini", "yaml", "json"]), default="ini",
              show_default=True)
@lab_dir_option
def inventory(lab_id: str, fmt: str, lab_dir: str | None) -> None:
    """Print an Ansible inventory of a lab's running machines: groups by template (and by
    segment for an up lab), connection facts as host variables."""
    click.echo(render_inventory(lab_inventory(find_lab(lab_base(lab_dir), lab_id)), fmt),
               nl=False)


@main.group()
def snapshots() -> None:
    """Inspect, take and restore the snapshots of a VM of a kept lab or an up lab."""


def _up_client(lab_dir: str | None, lab_id: str) -> ControlClient | None:
    """The control socket of ``lab_id`` if it is a `vboxlab up` lab (act through it), else None."""
    record = find_lab(lab_base(lab_dir), lab_id)
    return client(record) if record.status == "up" else None


def _kept(lab_dir: str | None, lab_id: str, vm_name: str, *,
          unplug_nics: bool = False) -> Machine:
    """A kept lab's machine, attached through its provider, its snapshot tree reconciled."""
    return kept_machine(lab_base(lab_dir), lab_id, vm_name, unplug_nics=unplug_nics)


@snapshots.command("list")
@click.argument("lab_id")
@click.argument("vm_name")
@lab_dir_option
def snapshots_list(lab_id: str, vm_name: str, lab_dir: str | None) -> None:
    """List a VM's snapshots."""
    live = _up_client(lab_dir, lab_id)
    if live is not None:
        found = live.call("snapshot.list", machine=vm_name)
        nodes, current = found["snapshots"], found["current"]
    else:
        tree = _kept(lab_dir, lab_id, vm_name).snapshots
        current = tree.current
        nodes = [{"name": n.name, "parent": n.parent, "created": n.created, "size": n.size,
                  "kind": n.kind, "test": n.test, "outcome": n.outcome} for n in tree]
    print_table(["snapshot", "parent", "taken", "size", "kind", "test", "outcome"],
                [[node["name"] + (" *" if node["name"] == current else ""),
                  node["parent"] or "-",
                  time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(node["created"])),
                  f"{node['size'] / 1048576:.1f} MiB", node["kind"], node.get("test") or "-",
                  node.get("outcome") or "-"] for node in nodes])


@snapshots.command("tree")
@click.argument("lab_id")
@click.argument("vm_name")
@lab_dir_option
def snapshots_tree(lab_id: str, vm_name: str, lab_dir: str | None) -> None:
    """Print a VM's snapshot tree (* marks the current state)."""
    live = _up_client(lab_dir, lab_id)
    if live is not None:
        click.echo(live.call("snapshot.list", machine=vm_name)["tree"])
        return
    click.echo(_kept(lab_dir, lab_id, vm_name).snapshots.render())


@snapshots.command("take")
@click.argument("lab_id")
@click.argument("vm_name")
@click.argument("snapshot", required=False)
@lab_dir_option
def snapshots_take(lab_id: str, vm_name: str, snapshot: str | None, lab_dir: str | None) -> None:
    """Take a snapshot of a running VM (named, or numbered)."""
    live = _up_client(lab_dir, lab_id)
    if live is not None:
        name = live.call("snapshot.take", machine=vm_name, name=snapshot)["snapshot"]
    else:
        machine = _kept(lab_dir, lab_id, vm_name)
        name = machine.snapshot(snapshot).name
        release_machine(machine)
    click.echo(f"{vm_name}: took snapshot {name}")


@snapshots.command("restore")
@click.argument("lab_id")
@click.argument("vm_name")
@click.argument("snapshot")
@click.option("--unplugged", is_flag=True,
              help="Start a stopped VM with its lab NICs unplugged (its network ended with "
                   "the run that made it)")
@lab_dir_option
def snapshots_restore(lab_id: str, vm_name: str, snapshot: str, unplugged: bool,
                      lab_dir: str | None) -> None:
    """Bring a VM back to a snapshot (starting it if it is stopped)."""
    live = _up_client(lab_dir, lab_id)
    if live is not None:
        live.call("snapshot.restore", machine=vm_name, name=snapshot)
        click.echo(f"{vm_name} restored to {snapshot}")
        return
    machine = _kept(lab_dir, lab_id, vm_name, unplug_nics=unplugged)
    machine.restore(snapshot)
    release_machine(machine)
    click.echo(f"{vm_name} restored to {snapshot}; reach it with: vboxlab ssh {lab_id} "
               f"{vm_name}" + (f" --lab-dir {lab_dir}" if lab_dir else ""))


@snapshots.command("delete")
@click.argument("lab_id")
@click.argument("vm_name")
@click.argument("snapshot")
@click.option("--subtree", is_flag=True, help="Also delete the snapshots taken from it")
@lab_dir_option
def snapshots_delete(lab_id: str, vm_name: str, snapshot: str, subtree: bool,
                     lab_dir: str | None) -> None:
    """Delete a snapshot (one with children only with --subtree)."""
    live = _up_client(lab_dir, lab_id)
    if live is not None:
        gone = live.call("snapshot.delete", machine=vm_name, name=snapshot,
                         subtree=subtree)["deleted"]
    else:
        gone = _kept(lab_dir, lab_id, vm_name).delete_snapshot(snapshot, subtree=subtree)
    click.echo(f"deleted {', '.join(gone)}")


@main.group()
def topology() -> None:
    """Validate and inspect topology files."""


@topology.command("check")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors")
def topology_check(files: tuple[Path, ...], quiet: bool) -> None:
    """Validate topology files; print the nodes, addresses and links each one yields."""
    failed = False
    for path in files:
        try:
            parsed = load_topology(path)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            failed = True
            continue
        if not quiet:
            click.echo(describe(parsed))
    if failed:
        sys.exit(1)


@main.command()
@lab_dir_option
@click.option("--lab", "lab_id", default=None, help="Remove this lab (also a kept one)")
@click.option("--kept", is_flag=True, help="Also remove kept labs")
def clean(lab_dir: str | None, lab_id: str | None, kept: bool) -> None:
    """Remove what dead runs left (processes, files), and only that."""
    try:
        removed = clean_labs(lab_base(lab_dir), include_kept=kept, only=lab_id)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {len(removed)} lab(s)" + (f": {', '.join(removed)}" if removed else ""))


def _add_commands() -> None:
    from vboxlab.control.cli import COMMANDS as LAB_COMMANDS
    from vboxlab.cost_cli import cost
    from vboxlab.mcp_server.cli import mcp_command
    from vboxlab.media.cli import iso, usb
    from vboxlab.migrate.cli import export
    from vboxlab.net.cli import traffic
    from vboxlab.report.cli import report
    from vboxlab.security.cli import scan
    from vboxlab.sync.cli import backup, backups, keys, remote, restore_backup_command, sync
    from vboxlab.templates.cli import templates
    from vboxlab.web.cli import dashboard_command

    main.add_command(templates)
    main.add_command(remote)
    main.add_command(sync)
    main.add_command(keys)
    main.add_command(cost)
    main.add_command(mcp_command)
    main.add_command(backup)
    main.add_command(restore_backup_command)
    main.add_command(backups)
    main.add_command(export)
    main.add_command(iso)
    main.add_command(usb)
    main.add_command(scan)
    main.add_command(traffic)
    main.add_command(report)
    for command in LAB_COMMANDS:
        main.add_command(command)
    main.add_command(dashboard_command)


_add_commands()


def run() -> None:
    """Entry point that turns vboxlab errors into a one-line message and exit status 2."""
    try:
        main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except VboxlabError as exc:
        click.echo(f"vboxlab: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
