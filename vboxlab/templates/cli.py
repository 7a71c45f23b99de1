"""``vboxlab templates ...``: the template repository from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from rich.console import Console

from vboxlab.errors import ConfigError
from vboxlab.tables import print_table
from vboxlab.templates.archive import export_template, import_template
from vboxlab.templates.pins import pins_path, read_pins, write_pin
from vboxlab.templates.repository import TemplateRepository
from vboxlab.templates.versions import TemplateRequest

console = Console(stderr=True)


def _size(folder: Path) -> str:
    """Bytes of the folder's own files (a layer's kernel and initrd are its base's: links)."""
    total = sum(p.stat().st_size for p in folder.iterdir()
                if p.is_file() and p.stat().st_nlink == 1)
    return f"{total / 1e6:.1f} MB"


def as_tree(rows: list[list[str]], parents: dict[tuple[str, str], tuple[str, str] | None]
            ) -> list[list[str]]:
    """``rows`` (name and version first) ordered as a tree: each layer under its base, its
    name drawn with the branch it hangs on."""
    keys = [(r[0], r[1]) for r in rows]
    by_key = dict(zip(keys, rows, strict=True))
    children: dict[tuple[str, str] | None, list[tuple[str, str]]] = {}
    for key in keys:
        parent = parents.get(key)
        children.setdefault(parent if parent in by_key else None, []).append(key)
    ordered: list[list[str]] = []

    def visit(key: tuple[str, str], prefix: str, last: bool, depth: int) -> None:
        row = list(by_key[key])
        if depth:
            row[0] = prefix + ("└─ " if last else "├─ ") + row[0]
        ordered.append(row)
        below = sorted(children.get(key, []))
        for index, child in enumerate(below):
            visit(child, prefix + (("   " if last else "│  ") if depth else ""),
                  index == len(below) - 1, depth + 1)

    for root in sorted(children.get(None, [])):
        visit(root, "", True, 0)
    return ordered


@click.group()
def templates() -> None:
    """Build, list, inspect, pin, share and prune VM templates."""


@templates.command("list")
def templates_list() -> None:
    """Definitions and installed versions, with their status and pins."""
    repo = TemplateRepository()
    pins = read_pins()
    definitions = repo.definitions()
    rows = []
    installed = repo.installed()
    parents: dict[tuple[str, str], tuple[str, str] | None] = {}
    for name, template in sorted(definitions.items()):
        if not any(b.template.name == name and b.template.version == template.version
                   for b in installed):
            rows.append([name, template.version, repo.status(name), "-",
                         "pinned" if pins.get(name) == template.version else "",
                         template.definition.description])
            if template.definition.base is not None:
                wanted = TemplateRequest.parse(template.definition.base)
                matching = [b for b in installed if b.template.name == wanted.name
                            and wanted.matches(b.template.version)]
                base_def = definitions.get(wanted.name)
                parents[(name, template.version)] = \
                    (wanted.name, matching[-1].template.version) if matching else \
                    (wanted.name, base_def.version) if base_def else None
    for built in installed:
        name, version = built.template.name, built.template.version
        status = "built"
        if built.base_problem is not None:
            status = "base missing" if "not installed" in built.base_problem else "stale base"
        elif name in definitions and definitions[name].version == version:
            status = repo.status(name)
        elif built.manifest.get("imported"):
            status = "imported"
        rows.append([name, version, status, _size(built.folder),
                     "pinned" if pins.get(name) == version else "",
                     built.template.definition.description])
        parents[(name, version)] = built.base_ref
    print_table(["name", "version", "status", "size", "pin", "description"],
                as_tree(rows, parents))


@templates.command("build")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Rebuild even if the inputs did not change")
def templates_build(names: tuple[str, ...], force: bool) -> None:
    """Build templates into the user's cache (skipped when their inputs are unchanged)."""
    repo = TemplateRepository()
    for name in names:
        started = time.monotonic()
        with console.status(f"building {name}") as status:
            def progress(step: str, name: str = name, started: float = started) -> None:
                elapsed = time.monotonic() - started
                status.update(f"{name} [{elapsed:.0f} s]: {step}")
                if not console.is_terminal:
                    click.echo(f"{name} [{elapsed:.0f} s]: {step}")

            built, ran = repo.build(name, force=force, progress=progress)
        verb = f"built in {built.manifest.get('build_seconds')} s" if ran else "up to date"
        click.echo(f"{name} {built.template.version}: {verb} ({built.folder})")


@templates.command("inspect")
@click.argument("request")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON")
def templates_inspect(request: str, as_json: bool) -> None:
    """Show an installed template's manifest (NAME, NAME@VERSION or NAME>=X,<Y)."""
    built = TemplateRepository().built(request)
    manifest = built.manifest
    if as_json:
        click.echo(json.dumps(manifest, indent=2))
        return
    click.echo(f"{built.template.name} {built.template.version}: "
               f"{built.template.definition.description}")
    click.echo(f"  folder:   {built.folder} ({_size(built.folder)})")
    click.echo(f"  built:    {manifest.get('built_at')} in {manifest.get('build_seconds')} s "
               f"by {manifest.get('builder')}")
    if manifest.get("imported"):
        click.echo(f"  imported: {manifest['imported']['at']} from {manifest['imported']['from']}")
    if built.base_ref is not None:
        click.echo(f"  recipe:   layer over {built.base_ref[0]} {built.base_ref[1]} "
                   f"(asks for {built.template.definition.base}); adds "
                   f"{len(manifest.get('packages_added', []))} packages")
    else:
        click.echo(f"  recipe:   {built.template.definition.build.recipe} "
                   f"(based on {built.template.definition.build.base})")
    click.echo(f"  inputs:   {manifest.get('inputs_digest')}")
    for name, digest in sorted(manifest.get("files", {}).items()):
        size = (built.folder / name).stat().st_size
        click.echo(f"  file:     {name} {size} bytes sha256 {digest}")
    packages = manifest.get("packages", [])
    click.echo(f"  packages: {len(packages)}: {', '.join(packages[:8])}"
               + (" ..." if len(packages) > 8 else ""))


def _name_version(text: str) -> tuple[str, str]:
    name, at, version = text.partition("@")
    if not at or not version:
        raise ConfigError(f"{text!r}: give NAME@VERSION (see `vboxlab templates list`)")
    return name, version


@templates.command("import-image")
@click.argument("image", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="The new template's name")
@click.option("--version", "version", required=True, help="Its version (X.Y.Z)")
@click.option("--like", default=None,
              help="Boot it with this installed template's kernel, initrd, command line and "
                   "access (NAME or NAME@VERSION)")
@click.option("--kernel", type=click.Path(path_type=Path), default=None, help="Kernel to boot")
@click.option("--initrd", type=click.Path(path_type=Path), default=None, help="Its initrd")
@click.option("--cmdline", default=None, help="Kernel command line")
@click.option("--format", "image_format", type=click.Choice(["raw"]), default=None,
              help="Say the image is raw (other formats are recognised by their header)")
@click.option("--firmware", type=click.Choice(["bios", "uefi"]), default=None,
              help="The disk boots with its own bootloader (a cloud image); each VM's keys "
                   "reach it as a NoCloud seed")
@click.option("--user", default="root", show_default=True,
              help="With --firmware: the user cloud-init gives the lab's key to")
@click.option("--memory", type=int, default=None, help="MiB of memory (default: the OVA's)")
@click.option("--cpus", type=int, default=None, help="CPUs (default: the OVA's)")
def templates_import_image(image: Path, name: str, version: str, like: str | None,
                           kernel: Path | None, initrd: Path | None, cmdline: str | None,
                           image_format: str | None, firmware: str | None, user: str,
                           memory: int | None, cpus: int | None) -> None:
    """Make a disk image from elsewhere (ova, vmdk, vdi, vhdx, qcow2, raw) a template."""
    from vboxlab.migrate.export import progress_printer
    from vboxlab.migrate.importer import BootFiles, import_image

    repo = TemplateRepository()
    base = repo.built(like) if like else None
    if firmware is not None:
        boot = BootFiles(like=base, firmware=firmware, user=user)
    else:
        if base is not None:
            kernel, initrd = kernel or base.kernel, initrd or base.initrd
        if kernel is None or initrd is None:
            raise ConfigError("say how the disk boots: --like TEMPLATE, or --kernel and "
                              "--initrd, or --firmware bios|uefi for a disk with its own "
                              "bootloader")
        boot = BootFiles(kernel=kernel, initrd=initrd, like=base, cmdline=cmdline)
    done = import_image(image, name, version, repo, boot, image_format=image_format,
                        memory=memory, cpus=cpus, progress=progress_printer(click.echo))
    click.echo(f"{name} {version}: {'already installed' if done.already_present else 'imported'}"
               f" ({done.folder})")


@templates.command("remove")
@click.argument("versions", nargs=-1, required=True)
def templates_remove(versions: tuple[str, ...]) -> None:
    """Delete installed versions (NAME@VERSION ...)."""
    repo = TemplateRepository()
    for text in versions:
        name, version = _name_version(text)
        folder = repo.remove(name, version)
        click.echo(f"removed {name} {version} ({folder})")


@templates.command("prune")
@click.option("--dry-run", is_flag=True, help="Only say what would go")
def templates_prune(dry_run: bool) -> None:
    """Remove installed versions that are not pinned, not the newest, not the definition's."""
    gone = TemplateRepository().prune(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for built in gone:
        click.echo(f"{verb} {built.template.name} {built.template.version}")
    click.echo(f"{len(gone)} version(s) {verb.split()[-1]}" if gone else "nothing to prune")


@templates.command("outdated")
def templates_outdated() -> None:
    """Templates whose pinned (or defined) version has a newer one."""
    rows = [list(row) for row in TemplateRepository().outdated()]
    if rows:
        print_table(["name", "in use", "newest", "newest is"], rows)
    else:
        click.echo("all templates are at their newest version")


@templates.command("pin")
@click.argument("request")
@click.option("--remove", is_flag=True, help="Unpin the template")
def templates_pin(request: str, remove: bool) -> None:
    """Pin NAME@VERSION (or NAME>=X: the newest installed match) in vboxlab-templates.lock."""
    repo = TemplateRepository()
    wanted = TemplateRequest.parse(request)
    if remove:
        write_pin(wanted.name, None)
        click.echo(f"unpinned {wanted.name} in {pins_path()}")
        return
    if wanted.spec is None:
        raise ConfigError(f"{request!r}: say which version, as NAME@VERSION")
    built = repo.built(str(wanted))  # an explicit version: pins do not apply
    write_pin(wanted.name, built.template.version)
    click.echo(f"pinned {wanted.name} to {built.template.version} in {pins_path()}")


@templates.command("export")
@click.argument("request")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--with-base", is_flag=True,
              help="A layer: put its bases in the archive too (else the archive names them "
                   "by digest and imports only where they are installed)")
def templates_export(request: str, output: Path, with_base: bool) -> None:
    """Write an installed template (NAME[@VERSION]) to one verified archive file."""
    built = TemplateRepository().built(request)
    with console.status(f"exporting {built.template.name} {built.template.version}"):
        export_template(built, output, with_bases=with_base)
    click.echo(f"{output}: {built.template.name} {built.template.version}, "
               f"{output.stat().st_size / 1e6:.1f} MB")


@templates.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an installed version with other files")
def templates_import(archive: Path, force: bool) -> None:
    """Verify an archive and install the template it carries."""
    with console.status(f"importing {archive}"):
        result = import_template(archive, TemplateRepository(), force=force)
    state = "already installed (identical)" if result.already_present else "installed"
    click.echo(f"{result.name} {result.version}: {state} ({result.folder})")
