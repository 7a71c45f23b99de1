"""``vboxlab traffic``: flows, rates and intrusion detection over capture files.

The same functions as ``network.flows()`` and the ``ids`` fixture, for the
pcaps a failing test left beside its report or a kept lab's ``captures/``
folder. A folder's ``A-to-B.pcap`` and ``B-to-A.pcap`` are read as the two
directions of the link ``A<->B``.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import click

from vboxlab.errors import ConfigError
from vboxlab.net.flows import flows_of_links, rates
from vboxlab.tables import print_table

DIRECTION = re.compile(r"^(?P<a>.+)-to-(?P<b>.+)\.pcap(?:\.old)?$")


def group_links(paths: Sequence[Path]) -> dict[str, list[Path]]:
    """Capture files by link: ``A-to-B.pcap`` and ``B-to-A.pcap`` (and ring halves) together."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and
                           (p.suffix in (".pcap", ".pcapng") or p.name.endswith(".pcap.old")))
            if not found:
                raise ConfigError(f"{path}: no .pcap or .pcapng files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"{path}: no such capture file or folder")
    links: dict[str, list[Path]] = {}
    for path in files:
        match = DIRECTION.match(path.name)
        name = ("<->".join(sorted((match["a"], match["b"]))) if match else path.name)
        links.setdefault(name, []).append(path)
    for name, group in links.items():  # a ring's older half before its current file
        links[name] = sorted(group, key=lambda p: (p.name.removesuffix(".old"),
                                                   not p.name.endswith(".old")))
    return links


def _nodes(pairs: Sequence[str]) -> dict[str, str]:
    nodes = {}
    for pair in pairs:
        address, sep, name = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r}: write ADDRESS=NAME, like 10.0.0.1=client",
                                     param_hint="--node")
        nodes[address] = name
    return nodes


@click.group()
def traffic() -> None:
    """Flows, rates and IDS alerts of capture files (a failing test's pcaps, a kept lab's)."""


@traffic.command("flows")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--node", "node_names", multiple=True, metavar="ADDRESS=NAME",
              help="Show this address as a node name (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="Print the flows as JSON")
@click.option("--credentials", is_flag=True,
              help="Also list credentials sent in clear; exit 1 if there are any")
def flows_command(paths: tuple[Path, ...], node_names: tuple[str, ...], as_json: bool,
                  credentials: bool) -> None:
    """Flows of capture files (one per conversation, across links)."""
    nodes = _nodes(node_names)
    table = flows_of_links(group_links(paths), nodes)
    found = table.cleartext_credentials() if credentials else []
    if as_json:
        data = json.loads(table.to_json())
        click.echo(json.dumps({"flows": data, "credentials": [c.to_dict() for c in found]}
                              if credentials else data, indent=2))
    else:
        print_table(["proto", "app", "client", "server", "packets", "bytes", "links"],
                    table.table())
        for credential in found:
            click.echo(f"cleartext: {credential}")
    sys.exit(1 if found else 0)


@traffic.command("rates")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--interval", default=1.0, show_default=True, help="Seconds per line")
def rates_command(paths: tuple[Path, ...], interval: float) -> None:
    """Packets and bits per second of each capture file, interval by interval."""
    rows = []
    for files in group_links(paths).values():
        for path in files:
            for rate in rates([path], interval):
                rows.append([path.name, f"{rate.start:.3f}", str(rate.packets),
                             f"{rate.bits_per_second:.0f}"])
    print_table(["file", "start", "packets", "bit/s"], rows)


@traffic.command("ids")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--rules", multiple=True, type=click.Path(path_type=Path),
              help="Suricata .rules files or folders to add to the shipped ones")
@click.option("--home-net", default=None, help="The lab's subnets, comma separated "
              "(default: the private ranges)")
@click.option("--expect", multiple=True, help="A rule id that must fire (sid:N; repeatable)")
@click.option("--forbid", default="any", show_default=True,
              help="'any' (every alert not expected fails), 'none', or sids like 1000004,1000006")
@click.option("--json", "as_json", is_flag=True, help="Print the alerts as JSON")
@click.option("--junit", type=click.Path(path_type=Path), default=None,
              help="Also write the alerts as JUnit XML to this file")
def ids_command(paths: tuple[Path, ...], rules: tuple[Path, ...], home_net: str | None,
                expect: tuple[str, ...], forbid: str, as_json: bool, junit: Path | None) -> None:
    """Suricata over capture files, link by link; exit 1 on an unexpected or missing alert."""
    from vboxlab.errors import ScanFailed
    from vboxlab.security.ids import DEFAULT_HOME_NET, Suricata, inspect_links
    from vboxlab.security.results import write_junit

    networks = [n.strip() for n in home_net.split(",")] if home_net else list(DEFAULT_HOME_NET)
    engine = Suricata(extra=list(rules), home_net=networks)
    forbidden: str | list[str] = forbid if forbid in ("any", "none") else forbid.split(",")
    with tempfile.TemporaryDirectory(prefix="vboxlab-ids-") as scratch:
        report = inspect_links(group_links(paths), engine, Path(scratch),
                               target=", ".join(str(p) for p in paths))
    if junit is not None:
        write_junit([report], junit)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(report.summary())
        if report:
            click.echo(report.table())
    try:
        report.check(list(expect), forbidden)
    except ScanFailed as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)
