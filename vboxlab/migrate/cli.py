"""``vboxlab export``: the command line over :mod:`vboxlab.migrate.export`."""

from __future__ import annotations

import shutil
from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.control.launcher import client
from vboxlab.errors import ConfigError
from vboxlab.labdirs import find_lab, kept_machine, release_machine
from vboxlab.migrate.export import EXPORT_FORMATS, export_machine, progress_printer


@click.command("export")
@click.argument("lab_id")
@click.argument("vm_name")
@click.option("--format", "fmt", type=click.Choice(EXPORT_FORMATS), required=True,
              help="qcow2, vmdk (monolithicSparse), vdi, vhdx, or ova (OVF 1.0 + VMDK)")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="The file to write")
@click.option("--snapshot", default=None, help="The disk as it was at this snapshot")
@click.option("--force", is_flag=True, help="Replace the output file if it exists")
@lab_dir_option
def export(lab_id: str, vm_name: str, fmt: str, output: Path, snapshot: str | None,
           force: bool, lab_dir: str | None) -> None:
    """Write a VM's disk for another hypervisor (a kept lab's or an up lab's VM)."""
    record = find_lab(lab_base(lab_dir), lab_id)
    if output.exists() and not force:
        raise ConfigError(f"{output} exists; choose another -o or replace it with --force")
    if record.status == "up":
        reply = client(record).call("machine.export", machine=vm_name, format=fmt,
                                    snapshot=snapshot, file=f"export-{vm_name}.{fmt}",
                                    replace=True)
        shutil.move(reply["path"], output)
        size = int(reply["size"])
    else:
        machine = kept_machine(lab_base(lab_dir), lab_id, vm_name)
        try:
            size = export_machine(machine, fmt, output, snapshot=snapshot, replace=force,
                                  progress=progress_printer(click.echo)).size
        finally:
            release_machine(machine)
    click.echo(f"{vm_name}{f' at {snapshot}' if snapshot else ''}: {fmt} written to {output} "
               f"({size / 1e6:.1f} MB)")
