"""``vboxlab remote`` and ``vboxlab sync``: the command line over :mod:`vboxlab.sync`."""

from __future__ import annotations

import time
from pathlib import Path

import click

from vboxlab.cli_options import lab_base, lab_dir_option
from vboxlab.errors import ConfigError
from vboxlab.paths import private_dir
from vboxlab.sync.backup import backup_lab, list_backups, restore_backup
from vboxlab.sync.project import ProjectStore
from vboxlab.sync.remotes import add_remote, load_remotes, remove_remote, resolve_remote
from vboxlab.sync.signing import PublicKey, SigningKey, TrustStore
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
@click.option("--unsigned", is_flag=True, help="Push without signing (no key needed)")
def sync_push(templates: tuple[str, ...], remote_name: str | None, unsigned: bool) -> None:
    """Send built templates (all, or NAME[@VERSION]...) to the remote, signed."""
    signer = None if unsigned else SigningKey.load()
    repository = TemplateRepository()
    store = TemplateStore(resolve_remote(remote_name))
    for name, version in select(list(templates), local_templates(repository)):
        done = store.push(built_by_version(repository, name, version), signer,
                          progress=click.echo)
        click.echo(done.describe("pushed"))


@sync.command("pull")
@click.argument("templates", nargs=-1)
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
@click.option("--allow-unsigned", is_flag=True,
              help="Also take manifests that are unsigned or signed by keys not trusted here")
def sync_pull(templates: tuple[str, ...], remote_name: str | None,
              allow_unsigned: bool) -> None:
    """Fetch templates (all, or NAME[@VERSION]...) from the remote, verified and signed by
    a trusted key."""
    repository = TemplateRepository()
    store = TemplateStore(resolve_remote(remote_name))
    trust = None if allow_unsigned else TrustStore()
    for name, version in select(list(templates), store.templates()):
        done = store.pull(name, version, repository, trust, progress=click.echo)
        click.echo(done.describe("pulled"))


@sync.group("project")
def sync_project() -> None:
    """Share a project's pins, topologies and compliance profiles through the remote."""


def _project_args(directory: Path, name: str | None) -> tuple[Path, str]:
    root = directory.resolve()
    if not root.is_dir():
        raise ConfigError(f"--dir {directory}: not a folder")
    return root, name or root.name.lower()


@sync_project.command("push")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path(),
              help="The project folder (default: here)")
@click.option("--name", default=None, help="The project's name on the remote (default: the "
              "folder's name)")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
@click.option("--unsigned", is_flag=True, help="Push without signing")
def sync_project_push(directory: Path, name: str | None, remote_name: str | None,
                      unsigned: bool) -> None:
    """Send vboxlab-templates.lock, topologies/ and profiles/ (refused if the remote moved)."""
    root, name = _project_args(directory, name)
    signer = None if unsigned else SigningKey.load()
    done = ProjectStore(TemplateStore(resolve_remote(remote_name))).push(root, name, signer)
    click.echo(done.describe("pushed"))


@sync_project.command("pull")
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path(),
              help="The project folder (default: here)")
@click.option("--name", default=None, help="The project's name on the remote")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
@click.option("--allow-unsigned", is_flag=True,
              help="Also take a manifest that is unsigned or signed by an untrusted key")
def sync_project_pull(directory: Path, name: str | None, remote_name: str | None,
                      allow_unsigned: bool) -> None:
    """Take the remote's shared files (refused where they would overwrite local edits)."""
    root, name = _project_args(directory, name)
    trust = None if allow_unsigned else TrustStore()
    done = ProjectStore(TemplateStore(resolve_remote(remote_name))).pull(root, name, trust)
    click.echo(done.describe("pulled"))


@sync.command("log")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def sync_log(remote_name: str | None) -> None:
    """Who pushed what and when, oldest first, with each entry's signature checked."""
    store = TemplateStore(resolve_remote(remote_name))
    entries = store.log(TrustStore())
    if not entries:
        click.echo(f"nothing pushed to {store.remote.url} yet")
        return
    verdict = {True: "trusted", False: "untrusted key", None: "UNSIGNED or altered"}
    print_table(["time (UTC)", "action", "what", "signer", "fingerprint", "signature"],
                [[time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time)), e.action,
                  e.subject, e.signer if e.signer != "-" else e.user, e.fingerprint,
                  verdict[e.trusted]] for e in entries])


@click.command("backup")
@click.argument("lab_id")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
@click.option("--unsigned", is_flag=True, help="Do not sign the backup's manifest")
@click.option("--no-snapshot", is_flag=True,
              help="Do not snapshot running machines first (their current state is then lost "
                   "on restore; their snapshots are kept)")
@lab_dir_option
def backup(lab_id: str, remote_name: str | None, unsigned: bool, no_snapshot: bool,
           lab_dir: str | None) -> None:
    """Copy a kept lab (disks, snapshot trees, records, keys) to a remote."""
    signer = None if unsigned else SigningKey.load()
    store = TemplateStore(resolve_remote(remote_name))
    done = backup_lab(lab_base(lab_dir), lab_id, store, signer,
                      snapshot_running=not no_snapshot, progress=click.echo)
    click.echo(f"backed up {lab_id} as {lab_id}@{done.stamp}: {done.files} files, "
               f"{done.moved_bytes / 1e6:.1f} MB sent")


@click.command("restore-backup")
@click.argument("lab_id")
@click.option("--stamp", default=None, help="Which backup (default: the latest)")
@click.option("--as", "new_id", default=None, help="Restore under another lab id")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
@click.option("--allow-unsigned", is_flag=True,
              help="Also take a backup that is unsigned or signed by an untrusted key")
@lab_dir_option
def restore_backup_command(lab_id: str, stamp: str | None, new_id: str | None,
                           remote_name: str | None, allow_unsigned: bool,
                           lab_dir: str | None) -> None:
    """Bring a backed-up lab back here as a kept lab (its machines stopped)."""
    store = TemplateStore(resolve_remote(remote_name))
    base = private_dir(lab_base(lab_dir))
    target = restore_backup(base, lab_id, store, TemplateRepository(),
                            None if allow_unsigned else TrustStore(), stamp=stamp,
                            new_id=new_id, progress=click.echo)
    click.echo(f"restored {lab_id} as {target.name} ({target}); start a machine with: vboxlab "
               f"snapshots restore {target.name} VM SNAPSHOT --unplugged")


@click.command("backups")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def backups(remote_name: str | None) -> None:
    """List the lab backups on a remote."""
    store = TemplateStore(resolve_remote(remote_name))
    rows = [[lab, stamp] for lab, stamp in list_backups(store)]
    if not rows:
        click.echo(f"no backups on {store.remote.url}")
        return
    print_table(["lab", "stamp"], rows)


@click.group()
def keys() -> None:
    """Signing keys for pushed templates and the keys this machine trusts."""


@keys.command("generate")
@click.option("--name", default=None, help="Your name on signatures (default USER@HOST)")
@click.option("--force", is_flag=True, help="Replace an existing key")
def keys_generate(name: str | None, force: bool) -> None:
    """Make your ed25519 signing key."""
    key = SigningKey.generate(name, replace=force)
    click.echo(f"{key.public.line}\nfingerprint {key.public.fingerprint}")


@keys.command("show")
def keys_show() -> None:
    """Print your public key and its fingerprint (give them to your team)."""
    key = SigningKey.load()
    click.echo(f"{key.public.line}\nfingerprint {key.public.fingerprint}")


@keys.command("list")
def keys_list() -> None:
    """List the keys this machine trusts."""
    store = TrustStore()
    own = store.own.public.fingerprint if store.own else None
    print_table(["fingerprint", "name", ""],
                [[fp, k.name, "(yours)" if fp == own else ""]
                 for fp, k in sorted(store.keys().items())])


@keys.command("publish")
@click.option("--remote", "remote_name", default=None, help="Remote name or URL")
def keys_publish(remote_name: str | None) -> None:
    """List your public key in the remote's team keys."""
    key = SigningKey.load()
    store = TemplateStore(resolve_remote(remote_name))
    added = store.publish_key(key.public)
    click.echo(f"{key.public.fingerprint} {'published on' if added else 'already on'} "
               f"{store.remote.url}")


@keys.command("trust")
@click.argument("fingerprints", nargs=-1)
@click.option("--remote", "remote_name", default=None,
              help="Take keys from this remote's team keys")
@click.option("--file", "files", multiple=True, type=click.Path(path_type=Path),
              help="A public key file (as `vboxlab keys show` prints)")
def keys_trust(fingerprints: tuple[str, ...], remote_name: str | None,
               files: tuple[Path, ...]) -> None:
    """Pin keys: FINGERPRINT... from the remote's team keys, or --file KEY.pub.

    Without fingerprints or files, list the remote's keys and which are trusted."""
    store = TrustStore()
    chosen = [PublicKey.parse_line(p.read_text(), str(p)) for p in files]
    if remote_name is not None or fingerprints or not files:
        team = {k.fingerprint: k for k in TemplateStore(resolve_remote(remote_name))
                .team_keys()}
        unknown = [fp for fp in fingerprints if fp not in team]
        if unknown:
            raise ConfigError(f"the remote lists no key {', '.join(unknown)}; it lists: "
                              + (", ".join(team) or "none"))
        chosen += [team[fp] for fp in fingerprints]
        if not fingerprints and not files:
            trusted = store.keys()
            print_table(["fingerprint", "name", "trusted here"],
                        [[fp, k.name, "yes" if fp in trusted else "no"]
                         for fp, k in sorted(team.items())])
            return
    for key in chosen:
        added = store.add(key)
        click.echo(f"{'trusting' if added else 'already trusted'} {key.fingerprint} "
                   f"({key.name})")


@keys.command("untrust")
@click.argument("fingerprint")
def keys_untrust(fingerprint: str) -> None:
    """Stop trusting a key."""
    key = TrustStore().remove(fingerprint)
    click.echo(f"no longer trusting {fingerprint} ({key.name})")


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
