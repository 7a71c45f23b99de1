"""``vboxlab scan``: the same scans as the ``scan`` fixture, on a kept lab's machines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.labdirs import attach_machine
from vboxlab.machine import Machine
from vboxlab.security.ports import Versions
from vboxlab.security.ports import scan_ports as run_scan
from vboxlab.security.results import ScanResult, write_junit
from vboxlab.security.session import Scan, ScanSettings

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON")
junit_option = click.option("--junit", type=click.Path(path_type=Path), default=None,
                            help="Also write the result as JUnit XML to this file")


@click.group()
def scan() -> None:
    """Security scans of a kept lab's machines (ports, vulns, malware, compliance)."""


def _machine(lab_dir: str | None, lab_id: str, vm_name: str) -> Machine:
    return attach_machine(lab_base(lab_dir), lab_id, vm_name)


def _show(result: ScanResult, as_json: bool, junit: Path | None, failed: bool) -> None:
    if junit is not None:
        write_junit([result], junit)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        click.echo(result.summary())
        click.echo(result.table())
    sys.exit(1 if failed else 0)


@scan.command("ports")
@click.argument("lab_id")
@click.argument("vm_name")
@click.option("--from", "from_node", default=None,
              help="Scan from this machine of the lab (a namespace host or a VM with nmap)")
@click.option("--address", default=None, help="The target's lab address (with --from)")
@click.option("--ports", default=None, help="Ports to scan, like 22,80 or 1-1024 (from the "
              "host: the guest ports to forward and scan)")
@click.option("--versions", type=click.Choice(["none", "light", "all"]), default="none",
              help="Service version detection (nmap -sV)")
@click.option("--expect", default=None,
              help="Exit 1 unless exactly these TCP ports are open (like 22,80)")
@json_option
@junit_option
@lab_dir_option
def scan_ports(lab_id: str, vm_name: str, from_node: str | None, address: str | None,
               ports: str | None, versions: str, expect: str | None, as_json: bool,
               junit: Path | None, lab_dir: str | None) -> None:
    """Scan a VM's ports with nmap, from a lab node or from the host."""
    machine = _machine(lab_dir, lab_id, vm_name)
    modes: dict[str, Versions] = {"none": False, "light": "light", "all": True}
    mode = modes[versions]
    session = Scan()
    if from_node is not None:
        if address is None:
            raise click.UsageError("--from needs the target's lab address (--address)")
        node = _machine(lab_dir, lab_id, from_node)
        result = run_scan(address, from_node=node, ports=ports, versions=mode)
        result.target = vm_name
    else:
        result = session.ports(machine, ports=ports, versions=mode)
    failed = False
    if expect is not None:
        unexpected, missing = result.difference(int(p) for p in expect.split(",") if p)
        failed = bool(unexpected or missing)
    _show(result, as_json, junit, failed)


@scan.command("vulns")
@click.argument("lab_id")
@click.argument("vm_name")
@click.option("--advisories", type=click.Path(path_type=Path), default=None,
              help="OSV records (folder or zip, ecosystem Debian:12)")
@click.option("--debsecan", type=click.Path(path_type=Path), default=None,
              help="A debsecan feed file (from the Debian security tracker)")
@click.option("--suite", default="bookworm-security",
              help="Debian security suite to compare with ('none' to skip)")
@click.option("--allowlist", type=click.Path(path_type=Path), default=None)
@click.option("--min-severity", default="unknown",
              help="low, medium, high or critical (findings of unknown severity are kept)")
@click.option("--no-cve-ids", is_flag=True, help="Do not fetch changelogs for CVE ids")
@json_option
@junit_option
@lab_dir_option
def scan_vulns(lab_id: str, vm_name: str, advisories: Path | None, debsecan: Path | None,
               suite: str,
               allowlist: Path | None, min_severity: str, no_cve_ids: bool, as_json: bool,
               junit: Path | None, lab_dir: str | None) -> None:
    """List a VM's packages that advisories say are vulnerable (exit 1 if any)."""
    machine = _machine(lab_dir, lab_id, vm_name)
    session = Scan(settings=ScanSettings(advisories=advisories, debsecan=debsecan,
                                         suite=None if suite == "none" else suite))
    result = session.vulnerabilities(machine, min_severity=min_severity, allowlist=allowlist,
                                     cve_ids=not no_cve_ids)
    _show(result, as_json, junit, bool(result))


@scan.command("malware")
@click.argument("lab_id")
@click.argument("vm_name")
@click.argument("paths", nargs=-1)
@click.option("--rules", multiple=True, type=click.Path(path_type=Path),
              help="More YARA rules (folder or file; repeatable)")
@click.option("--signatures", multiple=True, type=click.Path(path_type=Path),
              help="More ClamAV signature files (folder or file; repeatable)")
@click.option("--engine", "engines", multiple=True, type=click.Choice(["yara", "clamav"]),
              help="Engines to run (default: both)")
@click.option("--file-limit", default=32 * 1024 * 1024, show_default=True,
              help="Skip files larger than this many bytes")
@json_option
@junit_option
@lab_dir_option
def scan_malware(lab_id: str, vm_name: str, paths: tuple[str, ...], rules: tuple[Path, ...],
                 signatures: tuple[Path, ...], engines: tuple[str, ...], file_limit: int,
                 as_json: bool, junit: Path | None, lab_dir: str | None) -> None:
    """Scan a VM's files (PATHS, default /) with YARA and ClamAV (exit 1 on a detection)."""
    machine = _machine(lab_dir, lab_id, vm_name)
    session = Scan(settings=ScanSettings(rules=list(rules), signatures=list(signatures)))
    result = session.malware(machine, list(paths) or ["/"], engines=engines or
                             ("yara", "clamav"), file_limit=file_limit)
    _show(result, as_json, junit, bool(result))


@scan.command("compliance")
@click.argument("lab_id")
@click.argument("vm_name")
@click.option("--profile", required=True, help="Profile name (ssh-baseline, ...) or .yaml file")
@click.option("--profiles", multiple=True, type=click.Path(path_type=Path),
              help="More profile folders (repeatable)")
@json_option
@junit_option
@lab_dir_option
def scan_compliance(lab_id: str, vm_name: str, profile: str, profiles: tuple[Path, ...],
                    as_json: bool, junit: Path | None, lab_dir: str | None) -> None:
    """Check a VM against a compliance profile (exit 1 if a rule fails or errors)."""
    machine = _machine(lab_dir, lab_id, vm_name)
    session = Scan(settings=ScanSettings(profiles=list(profiles)))
    result = session.compliance(machine, profile)
    _show(result, as_json, junit, not result.passed)


@scan.command("lynis")
@click.argument("lab_id")
@click.argument("vm_name")
@click.option("--groups", default=None, help="Only these Lynis test groups (like ssh,kernel)")
@click.option("--skip", multiple=True, help="Lynis test ids to skip (PKGS-7392 always is)")
@json_option
@junit_option
@lab_dir_option
def scan_lynis(lab_id: str, vm_name: str, groups: str | None, skip: tuple[str, ...],
               as_json: bool, junit: Path | None, lab_dir: str | None) -> None:
    """Audit a VM with Lynis inside it (exit 1 on warnings)."""
    machine = _machine(lab_dir, lab_id, vm_name)
    result = Scan().lynis(machine, groups=groups, skip=skip)
    _show(result, as_json, junit, bool(result))
