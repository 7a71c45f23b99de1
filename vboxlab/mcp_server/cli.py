"""``vboxlab mcp``: serve the labs under a lab folder to an MCP client over stdio."""

from __future__ import annotations

from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.paths import private_dir


@click.command("mcp")
@click.option("--allow-mutations", is_flag=True,
              help="Also offer the tools that change labs (up, down, commands, links, "
                   "snapshots); without it every tool only reads")
@click.option("--reports", type=click.Path(path_type=Path), default=None,
              help="Where lab reports are written (pytest --lab-report DIR): the newest is "
                   "served as the resource vboxlab://reports/latest")
@lab_dir_option
def mcp_command(allow_mutations: bool, reports: Path | None, lab_dir: str | None) -> None:
    """Run an MCP server on stdio for the labs under the lab folder."""
    from vboxlab.mcp_server.tools import build_server

    base = private_dir(lab_base(lab_dir))
    build_server(base, allow_mutations=allow_mutations, reports=reports).run("stdio")
