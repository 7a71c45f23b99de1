"""``vboxlab cost``: the command line over :mod:`vboxlab.cost`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.cost import Need, PriceTable, estimate, needs_of_lab
from vboxlab.labdirs import find_lab
from vboxlab.tables import print_table
from vboxlab.usage import read_usage


@click.command("cost")
@click.argument("target")
@click.option("--provider", type=click.Choice(["aws", "gcp", "azure"]), default="aws",
              show_default=True)
@click.option("--region", default=None, help="Region of the price table (default: its first)")
@click.option("--prices", type=click.Path(path_type=Path), default=None,
              help="A price table of your own (same layout as the shipped one)")
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON")
@lab_dir_option
def cost(target: str, provider: str, region: str | None, prices: Path | None, as_json: bool,
         lab_dir: str | None) -> None:
    """What a lab (LAB id, with its measured run) or a TOPOLOGY file would cost in a cloud."""
    table = PriceTable.load(prices)
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        from vboxlab.net import load_topology

        topology = load_topology(Path(target))
        needs = [Need(n.name, n.cpus, n.memory) for n in topology.nodes.values()
                 if n.provider != "netns"]
        duration = None
    else:
        record = find_lab(lab_base(lab_dir), target)
        needs, duration = needs_of_lab(record.machines, read_usage(record.dir))
    report = estimate(needs, table, provider, region, duration)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        return
    money = report.currency

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} MiB"

    print_table(["machine", "asked", "instance", f"{money}/hour", f"{money}/run", "peak memory",
                 "peak CPU"],
                [[m.need.name, f"{m.need.cpus} CPU, {m.need.memory_mib} MiB", m.instance,
                  f"{m.hourly:.4f}", "-" if m.per_run is None else f"{m.per_run:.5f}",
                  mib(m.need.peak_rss_mib),
                  "-" if m.need.peak_cpu_percent is None else f"{m.need.peak_cpu_percent:.0f} %"]
                 for m in report.machines])
    run = "" if report.per_run is None else \
        f", {report.per_run:.5f} per run of {report.duration_s:.0f} s"
    click.echo(f"total: {report.hourly:.4f} {money}/hour "
               f"({report.hourly * report.hours_per_month:.2f}/month){run}; {provider} "
               f"{report.region} list prices as of {report.as_of}")
    for line in report.recommendations():
        click.echo(f"right-size {line}")
