"""``vboxlab dashboard``."""

from __future__ import annotations

from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.web.serve import serve


@click.command("dashboard")
@click.option("--port", type=int, default=8470, show_default=True,
              help="TCP port (0: any free port)")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback is reachable by others")
@click.option("--topologies", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder of topology files the builder offers (default: ./topologies)")
@lab_dir_option
def dashboard_command(port: int, host: str, topologies: Path | None,
                      lab_dir: str | None) -> None:
    """Serve the web dashboard (labs, resource use, quick actions, the lab builder)."""
    if topologies is None and Path("topologies").is_dir():
        topologies = Path("topologies").resolve()
    serve(lab_base(lab_dir), host=host, port=port, topologies=topologies,
          announce=lambda line: click.echo(line, err=line.startswith("WARNING")))
