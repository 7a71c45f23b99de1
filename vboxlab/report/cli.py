"""``vboxlab report``: run a lab report's tests again, or compare two runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import click

from vboxlab.report.manifest import diff_manifests, plan_reproduction, read_manifest
from vboxlab.templates.pins import write_pin


@click.group()
def report() -> None:
    """Lab reports: rerun a run from its lab-manifest.json, or diff two runs."""


@report.command("reproduce", context_settings={"ignore_unknown_options": True})
@click.argument("manifest", type=click.Path(path_type=Path))
@click.argument("pytest_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--rootdir", type=click.Path(path_type=Path), default=None,
              help="The project folder to run in (default: the current folder)")
@click.option("--force", is_flag=True, help="Run even if a topology file changed since")
@click.option("--dry-run", is_flag=True, help="Check and print the command; run nothing")
def reproduce(manifest: Path, pytest_args: tuple[str, ...], rootdir: Path | None, force: bool,
              dry_run: bool) -> None:
    """Check the run's templates (by digest) and topologies are here, pin the templates, and
    rerun the same tests with the same seeds. Arguments after -- go to pytest."""
    run = read_manifest(manifest)
    plan = plan_reproduction(run, list(pytest_args), rootdir=rootdir, force=force)
    if plan.cwd.resolve() != Path(run.rootdir).resolve():
        click.echo(f"note: the run was in {run.rootdir}; running in {plan.cwd}", err=True)
    for warning in plan.warnings:
        click.echo(f"warning: {warning}", err=True)
    with tempfile.TemporaryDirectory(prefix="vboxlab-reproduce-") as scratch:
        seeds = Path(scratch) / "seeds.json"
        seeds.write_text(json.dumps(plan.seeds))
        pins = Path(scratch) / "vboxlab-templates.lock"
        for name, version in plan.pins.items():
            write_pin(name, version, pins)
        argv = [*plan.argv, f"--lab-seed-file={seeds}"]
        pinned = ", ".join(f"{n}=={v}" for n, v in sorted(plan.pins.items())) or "none"
        click.echo(f"templates pinned: {pinned}; {len(plan.seeds)} seeds; in {plan.cwd}")
        click.echo(" ".join(argv))
        if dry_run:
            return
        environment = dict(os.environ, VBOXLAB_PINS=str(pins))
        done = subprocess.run(argv, cwd=plan.cwd, env=environment, check=False)
    sys.exit(done.returncode)


@report.command("diff")
@click.argument("first", type=click.Path(path_type=Path))
@click.argument("second", type=click.Path(path_type=Path))
def diff(first: Path, second: Path) -> None:
    """What differs between two runs' manifests (environment, templates, seeds, outcomes);
    exit 1 if anything does."""
    lines = diff_manifests(read_manifest(first), read_manifest(second))
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("the runs match: same environment, templates, topologies, seeds and outcomes")
    sys.exit(1 if lines else 0)
