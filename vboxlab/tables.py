"""Tables for the command line: rich on a terminal, tab-separated lines when piped."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

console = Console()


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """A table on a terminal; tab-separated lines (header first) for pipes and scripts."""
    if console.is_terminal:
        table = Table(*headers)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    else:
        for line in [headers, *rows]:
            click.echo("\t".join(cell.replace("\t", " ") for cell in line))
