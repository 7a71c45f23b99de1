"""``vboxlab iso ...`` and ``vboxlab usb ...``: boot media from the command line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from vboxlab.media.bootspec import BootSpec
from vboxlab.media.iso import build_iso
from vboxlab.media.seed import build_seed
from vboxlab.media.usb import Overrides, device_source, write_image
from vboxlab.tables import print_table

console = Console(stderr=True)


@contextmanager
def byte_progress(what: str) -> Iterator[Any]:
    """A progress bar (bytes, rate, ETA) on a terminal; nothing when piped."""
    columns = (f"[bold]{what}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@click.group()
def iso() -> None:
    """Build ISO images (bootable with --boot or --kernel) and cloud-init seeds."""


@iso.command("build")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--label", default="VBOXLAB", show_default=True,
              help="Volume label (1-32 of A-Z a-z 0-9 _)")
@click.option("--boot", "boot_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Boot spec (TOML: entries, default, timeout, bios, uefi)")
@click.option("--kernel", help="Boot this kernel (path inside SOURCE); one entry, no menu")
@click.option("--initrd", help="Its initrd (path inside SOURCE)")
@click.option("--append", default="", help="Its kernel command line")
@click.option("--no-uefi", is_flag=True, help="BIOS boot only (no GRUB EFI image)")
@click.option("--no-joliet", is_flag=True, help="Leave out the Joliet names")
@click.option("--publisher", default="", help="Publisher identifier")
def iso_build(source: Path, output: Path, label: str, boot_file: Path | None,
              kernel: str | None, initrd: str | None, append: str, no_uefi: bool,
              no_joliet: bool, publisher: str) -> None:
    """Build an ISO image from the folder SOURCE."""
    if boot_file is not None and kernel is not None:
        raise click.UsageError("give --boot FILE or --kernel, not both")
    boot = None
    if boot_file is not None:
        boot = BootSpec.from_file(boot_file)
    elif kernel is not None:
        boot = BootSpec.single(kernel, initrd, append, uefi=not no_uefi)
    elif initrd or append:
        raise click.UsageError("--initrd and --append need --kernel")
    with byte_progress("writing ISO") as update:
        result = build_iso(source, output, label=label, boot=boot, joliet=not no_joliet,
                           publisher=publisher, progress=update)
    ways = [w for w, on in (("BIOS", result.bios), ("UEFI", result.uefi)) if on]
    click.echo(f"{result.path}: {result.size} bytes, {result.files} files"
               + (f", boots with {' and '.join(ways)}" if ways else ""))


@iso.command("seed")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--user-data", required=True, type=click.Path(exists=True, dir_okay=False,
                                                            path_type=Path))
@click.option("--meta-data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--network-config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--hostname", help="local-hostname for meta-data")
def iso_seed(output: Path, user_data: Path, meta_data: Path | None,
             network_config: Path | None, hostname: str | None) -> None:
    """Build a cloud-init NoCloud seed image (label cidata)."""
    result = build_seed(output, user_data=user_data.read_text(),
                        meta_data=meta_data.read_text() if meta_data else None,
                        network_config=network_config.read_text() if network_config else None,
                        hostname=hostname)
    click.echo(f"{result.path}: cloud-init seed, {result.size} bytes")


@click.group()
def usb() -> None:
    """List disks and write images to USB sticks, checked and verified."""


@usb.command("list")
@click.option("--all", "show_all", is_flag=True, help="Also list fixed disks and loop devices")
def usb_list(show_all: bool) -> None:
    """Removable disks (with --all: every disk) and what they hold."""
    rows = []
    for dev in device_source().devices():
        if not (dev.removable or show_all):
            continue
        rows.append([str(dev.path), f"{dev.size / 1e9:.2f} GB", dev.transport,
                     "yes" if dev.removable else "no", dev.model or "-",
                     dev.serial or dev.backing_file or "-", ",".join(dev.partitions) or "-",
                     ",".join(dev.mountpoints) or "-"])
    print_table(["device", "size", "transport", "removable", "model", "serial", "partitions",
                 "mounted"], rows)


@usb.command("write")
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("device", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation")
@click.option("--allow-fixed-disk", is_flag=True, help="Write to a disk that is not removable")
@click.option("--allow-mounted", is_flag=True, help="Write to a disk with mounted filesystems")
@click.option("--no-verify", is_flag=True, help="Skip reading the device back")
def usb_write(image: Path, device: Path, yes: bool, allow_fixed_disk: bool,
              allow_mounted: bool, no_verify: bool) -> None:
    """Write IMAGE to the whole disk DEVICE, then verify it."""
    target = device_source().device(device)
    if not yes:
        click.confirm(f"Erase {target.describe()} and write {image} to it?", abort=True)
    with byte_progress("writing") as update:
        result = write_image(image, device, expect=target.identity, verify=not no_verify,
                             progress=update,
                             overrides=Overrides(allow_fixed=allow_fixed_disk,
                                                 allow_mounted=allow_mounted))
    rate = result.size / result.write_seconds / 1e6 if result.write_seconds else 0
    click.echo(f"wrote {result.size} bytes to {result.device} in {result.write_seconds:.2f} s "
               f"({rate:.0f} MB/s; {result.zero_bytes} zero bytes not sent)"
               + ("" if no_verify else f"; verified, sha256 {result.sha256}"))
