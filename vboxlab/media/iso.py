"""Bootable ISO images from a folder, built with pycdlib.

ISO 9660 level 3 with Rock Ridge (exact names, modes, symlinks, deep trees) and
Joliet; BIOS boot through ISOLINUX, UEFI boot through a GRUB EFI image (both El
Torito entries in one image) and an isohybrid MBR, so the same file boots as a CD
and from a USB stick. Boot files live in ``/isolinux`` on the image.
"""

from __future__ import annotations

import re
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pycdlib

from vboxlab.media.bootloaders import BIOS_FILES, bios_file, build_efi_image
from vboxlab.media.bootspec import BootSpec, grub_config, isolinux_config
from vboxlab.media.tree import MediaError, scan, walk

#: (bytes written, bytes in all) during the write
Progress = Callable[[int, int], None]
BOOT_DIR = "isolinux"
RR_MOVED = ".rr_moved"
_LABEL = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_A_CHARS = re.compile(r"^[A-Za-z0-9_ !\"%&'()*+,\-./:;<=>?]*$")


@dataclass(frozen=True)
class IsoResult:
    """What was built."""

    path: Path
    size: int
    files: int
    bios: bool
    uefi: bool


def check_label(label: str) -> str:
    """A volume label: 1-32 letters, digits or '_' (ISO 9660 d-characters, any case)."""
    if not _LABEL.fullmatch(label):
        bad = sorted(set(re.sub("[A-Za-z0-9_]", "", label)))
        why = ("is longer than 32 characters" if len(label) > 32 else
               "is empty" if not label else f"has characters ISO 9660 does not allow ({bad})")
        raise MediaError(f"volume label {label!r} {why}; use 1-32 letters, digits and '_'")
    return label


def check_identifier(field: str, value: str, limit: int) -> str:
    """Publisher, preparer, application and system identifiers (ISO 9660 a-characters)."""
    if len(value) > limit:
        raise MediaError(f"{field} {value!r} is longer than {limit} characters")
    if not _A_CHARS.fullmatch(value):
        raise MediaError(f"{field} {value!r} has characters ISO 9660 does not allow; use "
                         "letters, digits, spaces and simple punctuation")
    return value


def build_iso(source: Path | None, output: Path, *, label: str = "VBOXLAB",
              boot: BootSpec | None = None, extra: dict[str, Path] | None = None,
              joliet: bool = True, publisher: str = "",
              preparer: str = "vboxlab", application: str = "vboxlab", system: str = "LINUX",
              progress: Progress | None = None) -> IsoResult:
    """Build ``output`` from the folder ``source``; bootable when ``boot`` is given.

    ``extra`` adds host files at paths of the image (for instance a kernel and
    initrd next to a user's tree) without copying them into ``source``.
    """
    check_label(label)
    check_identifier("publisher", publisher, 128)
    check_identifier("preparer", preparer, 128)
    check_identifier("application", application, 128)
    check_identifier("system identifier", system, 32)
    tree = scan(source, extra, joliet=joliet)
    entries = walk(tree)
    if any(e.rel.name.lower() in (RR_MOVED, "rr_moved") for e in tree.children):
        raise MediaError(f"{source}: a top-level {RR_MOVED} or rr_moved folder would clash "
                         "with where Rock Ridge relocates deep folders; rename it")
    if boot is not None:
        clash = [e for e in tree.children if e.rel.name.lower() == BOOT_DIR]
        if clash:
            raise MediaError(f"{clash[0].source}: the image keeps its boot files in /{BOOT_DIR}; "
                             "rename that folder in the source tree")
        by_rel = {str(e.rel): e for e in entries}
        for menu in boot.entries:
            for field, wanted in (("kernel", menu.kernel), ("initrd", menu.initrd)):
                if wanted is not None and (wanted not in by_rel or by_rel[wanted].kind != "file"):
                    raise MediaError(f"boot entry {menu.name!r}: {field} {wanted!r} is not a "
                                     f"file of the image (source {source}, extra files "
                                     f"{sorted(extra or {})})")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=label, sys_ident=system, pub_ident_str=publisher,
            preparer_ident_str=preparer, app_ident_str=application,
            joliet=3 if joliet else None, rock_ridge="1.09")
    if hasattr(iso, "_rr_moved_rr_name"):
        # folders deeper than ISO 9660's 8 levels are relocated; hide their parking place
        # as mkisofs -hide-rr-moved does (Rock Ridge readers put them back where they were)
        iso._rr_moved_rr_name = RR_MOVED.encode()
    try:
        with tempfile.TemporaryDirectory(dir=output.parent, prefix=".vboxlab-iso-") as scratch:
            for entry in entries:
                rr_name = entry.rel.name
                jpath = entry.joliet_path if joliet else None
                if entry.kind == "dir":
                    iso.add_directory(entry.iso_path, rr_name=rr_name, joliet_path=jpath,
                                      file_mode=0o040000 | entry.mode)
                elif entry.kind == "file":
                    iso.add_file(str(entry.source), entry.iso_path, rr_name=rr_name,
                                 joliet_path=jpath, file_mode=0o100000 | entry.mode)
                else:
                    iso.add_symlink(symlink_path=entry.iso_path, rr_symlink_name=rr_name,
                                    rr_path=entry.target)
            if boot is not None:
                _add_boot(iso, boot, Path(scratch), joliet)
            size = _write(iso, partial, progress)
        partial.replace(output)
    except pycdlib.pycdlibexception.PyCdlibException as exc:
        partial.unlink(missing_ok=True)
        raise MediaError(f"building {output} from {source}: {exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        iso.close()
    files = sum(1 for e in entries if e.kind == "file")
    return IsoResult(output, size, files, bool(boot and boot.bios), bool(boot and boot.uefi))


def _add_boot(iso: pycdlib.PyCdlib, boot: BootSpec, scratch: Path, joliet: bool) -> None:
    top = f"/{BOOT_DIR.upper()}"

    def add(data_path: Path, name: str) -> str:
        iso_path = f"{top}/{name.upper().replace('-', '_')};1"
        iso.add_file(str(data_path), iso_path, rr_name=name,
                     joliet_path=f"/{BOOT_DIR}/{name}" if joliet else None,
                     file_mode=0o100444)
        return iso_path

    iso.add_directory(top, rr_name=BOOT_DIR, joliet_path=f"/{BOOT_DIR}" if joliet else None,
                      file_mode=0o040555)
    marker = f"vboxlab-{secrets.token_hex(6)}.id"
    (scratch / marker).write_text("vboxlab boot medium\n")
    add(scratch / marker, marker)
    catalog = f"{top}/BOOT.CAT;1"
    joliet_catalog = f"/{BOOT_DIR}/boot.cat" if joliet else None
    if boot.bios:
        for name in BIOS_FILES:
            add(bios_file(name), name)
        cfg = scratch / "isolinux.cfg"
        cfg.write_text(isolinux_config(boot))
        add(cfg, "isolinux.cfg")
        iso.add_eltorito(f"{top}/ISOLINUX.BIN;1", bootcatfile=catalog, rr_bootcatname="boot.cat",
                         joliet_bootcatfile=joliet_catalog, boot_load_size=4,
                         boot_info_table=True, media_name="noemul")
    if boot.uefi:
        efi = build_efi_image(grub_config(boot, f"{BOOT_DIR}/{marker}"), scratch)
        add(efi.path, "efiboot.img")
        iso.add_eltorito(f"{top}/EFIBOOT.IMG;1", bootcatfile=catalog, rr_bootcatname="boot.cat",
                         joliet_bootcatfile=joliet_catalog, efi=True, platform_id=0xEF,
                         media_name="noemul")
    if boot.bios:
        iso.add_isohybrid(efi=boot.uefi)


def _write(iso: pycdlib.PyCdlib, partial: Path, progress: Progress | None) -> int:
    def callback(done: int, total: int, _opaque: object) -> None:
        if progress is not None:
            progress(done, total)

    with partial.open("wb") as out:
        iso.write_fp(out, blocksize=1 << 20, progress_cb=callback)
        return out.tell()
