"""``vboxlab remote`` and ``vboxlab sync``: the command line over :mod:`vboxlab.sync`."""

from __future__ import annotations

import click

from vboxlab.sync.remotes import add_remote, load_remotes, remove_remote, resolve_remote
from vboxlab.sync.store import (
    TemplateStore,
    built_by_version,
    local_templates,
    select,
)
from vboxlab.tables import print_table
from vboxlab.templates import TemplateRepository


@click.group()
def remote() -> None:
    """Remotes templates are synced with: folders and sftp:// URLs."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
def remote_add(name: str, url: str) -> None:
    """Add (or change) the remote NAME at URL (checked now; no credentials are stored)."""
    added = add_remote(name, url)
    click.echo(f"remote {name}: {added.url}")


@remote.command("list")
def remote_list() -> None:
    """List the remotes."""
    remotes = load_remotes()
    if not remotes:
        click.echo("no remotes; add one with: vboxlab remote add NAME URL")
        return
    print_table(["remote", "url"], [[n, u] for n, u in sorted(remotes.items())])


@remote.command("remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Forget the remote NAME (nothing on it is touched)."""
    remove_remote(name)
    click.echo(f"removed remote {name}")


@click.group()
def sync() -> None:
    """Push templates to a remote or pull them from it, as content-addressed blobs."""


@sync.command("push")
@click.argument("templates", nargs=-1)
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def sync_push(templates: tuple[str, ...], remote_name: str | None) -> None:
    """Send built templates (all, or NAME[@VERSION]...) to the remote."""
    repository = TemplateRepository()
    store = TemplateStore(resolve_remote(remote_name))
    for name, version in select(list(templates), local_templates(repository)):
        done = store.push(built_by_version(repository, name, version), progress=click.echo)
        click.echo(done.describe("pushed"))


@sync.command("pull")
@click.argument("templates", nargs=-1)
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def sync_pull(templates: tuple[str, ...], remote_name: str | None) -> None:
    """Fetch templates (all, or NAME[@VERSION]...) from the remote, verified."""
    repository = TemplateRepository()
    store = TemplateStore(resolve_remote(remote_name))
    for name, version in select(list(templates), store.templates()):
        done = store.pull(name, version, repository, progress=click.echo)
        click.echo(done.describe("pulled"))


@sync.command("list")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def sync_list(remote_name: str | None) -> None:
    """List the templates on the remote."""
    store = TemplateStore(resolve_remote(remote_name))
    rows = [[n, v] for n, v in store.templates()]
    if not rows:
        click.echo(f"no templates on {store.remote.url}")
        return
    print_table(["template", "version"], rows)
