"""Reading a source tree for an image: what goes in, under which names, and what is refused.

Every entry gets three names: its real name (Rock Ridge, exact), a Joliet name
(at most 64 characters) and an ISO 9660 name (upper-case d-characters, made
unique inside its directory with a ``_N`` suffix). Refused, naming the path:
FIFOs, sockets and device files; symlinks that are absolute or lead outside the
tree (links inside it are stored as Rock Ridge symlinks, never followed); Joliet
names that collide once cut to 64 characters.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vboxlab.errors import ConfigError

#: ISO 9660 level 3 names: 30 characters for name + extension (Ecma-119 7.5.2), 31 for directories
ISO_FILE_MAX = 30
ISO_DIR_MAX = 31
JOLIET_MAX = 64
_NOT_D_CHAR = re.compile(r"[^A-Z0-9_]")


class MediaError(ConfigError):
    """A source tree or image setting that cannot become boot media."""


@dataclass
class Entry:
    """One file, directory or symlink of the tree."""

    source: Path
    rel: PurePosixPath  # relative path in the tree (real names)
    kind: str  # "dir", "file", "symlink"
    mode: int = 0o644
    target: str = ""  # symlink target
    iso_path: str = ""  # /NAME/FILE.EXT;1
    joliet_path: str = ""
    children: list[Entry] = field(default_factory=list)
    iso_taken: set[str] = field(default_factory=set)  # ISO names used by the children
    joliet_taken: dict[str, str] = field(default_factory=dict)  # folded Joliet name -> name


def _iso_component(name: str, is_dir: bool) -> tuple[str, str]:
    """The d-character stem and extension of ``name`` (extension empty for directories)."""
    upper = name.upper()
    if is_dir:
        return _NOT_D_CHAR.sub("_", upper)[:ISO_DIR_MAX] or "_", ""
    stem, dot, ext = upper.rpartition(".")
    if not dot or not stem:
        stem, ext = upper, ""
    stem, ext = _NOT_D_CHAR.sub("_", stem), _NOT_D_CHAR.sub("_", ext)[:8]
    return (stem[:ISO_FILE_MAX - len(ext)] or "_"), ext


def _unique(stem: str, ext: str, taken: set[str], limit: int) -> str:
    def joined(s: str) -> str:
        return f"{s}.{ext}" if ext else s

    candidate = joined(stem)
    number = 0
    while candidate in taken:
        number += 1
        suffix = f"_{number}"
        candidate = joined(stem[:limit - len(ext) - len(suffix)] + suffix)
    taken.add(candidate)
    return candidate


def scan(root: Path | None, extra: dict[str, Path] | None = None, *,
         joliet: bool = True) -> Entry:
    """The whole tree under ``root`` with every name worked out; raises MediaError on bad input.

    ``extra`` adds host files at tree paths (``{"boot/vmlinuz": Path(...)}``) without
    copying them into the folder; ``root`` may then be None (an image of extras only).
    """
    top = Entry(Path(root) if root else Path(), PurePosixPath("."), "dir", mode=0o755,
                iso_path="/", joliet_path="/")
    if root is not None:
        root = Path(root)
        if not root.is_dir():
            raise MediaError(f"{root}: not a directory; give the folder whose contents go on "
                             "the image")
        _fill(top, root.resolve(), joliet)
    for rel, host in sorted((extra or {}).items()):
        _add_extra(top, PurePosixPath(rel), Path(host), joliet)
    return top


def _add_extra(top: Entry, rel: PurePosixPath, host: Path, joliet: bool) -> None:
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise MediaError(f"extra file path {str(rel)!r}: give a relative path inside the image")
    if not host.is_file():
        raise MediaError(f"extra file {host} (for {rel}) is not a file")
    parent = top
    for depth, part in enumerate(rel.parts[:-1]):
        found = next((c for c in parent.children if c.rel.name == part), None)
        if found is None:
            found = _attach(parent, Entry(host, PurePosixPath(*rel.parts[:depth + 1]), "dir",
                                          mode=0o755), joliet)
        elif found.kind != "dir":
            raise MediaError(f"extra file {rel}: {found.rel} is a file in the source tree")
        parent = found
    if any(c.rel.name == rel.name for c in parent.children):
        raise MediaError(f"extra file {rel} is already in the source tree; rename one")
    _attach(parent, Entry(host, rel, "file", mode=0o644), joliet)


def _attach(parent: Entry, entry: Entry, check_joliet: bool) -> Entry:
    """Give ``entry`` its ISO 9660 and Joliet names inside ``parent`` and add it."""
    name = entry.rel.name
    stem, ext = _iso_component(name, entry.kind == "dir")
    iso_name = _unique(stem, ext, parent.iso_taken, ISO_DIR_MAX if entry.kind == "dir"
                       else ISO_FILE_MAX + (1 if ext else 0))
    entry.iso_path = f"{parent.iso_path.rstrip('/')}/{iso_name}" + \
        ("" if entry.kind == "dir" else ";1")
    joliet = name[:JOLIET_MAX]
    if check_joliet and joliet.lower() in parent.joliet_taken:
        raise MediaError(
            f"{entry.source} and {parent.source / parent.joliet_taken[joliet.lower()]} collide "
            f"in the Joliet names Windows reads ({joliet!r}: Joliet names are cut to "
            f"{JOLIET_MAX} characters and compared without case); rename one, or build with "
            "joliet=False")
    parent.joliet_taken[joliet.lower()] = name
    entry.joliet_path = f"{parent.joliet_path.rstrip('/')}/{joliet}"
    parent.children.append(entry)
    return entry


def _fill(parent: Entry, real_root: Path, joliet: bool) -> None:
    with os.scandir(parent.source) as listing:
        items = sorted(listing, key=lambda e: e.name)
    for item in items:
        path = Path(item.path)
        rel = parent.rel / item.name if parent.rel != PurePosixPath(".") else \
            PurePosixPath(item.name)
        info = item.stat(follow_symlinks=False)
        mode = stat.S_IMODE(info.st_mode)
        if stat.S_ISLNK(info.st_mode):
            target = str(path.readlink())
            _check_link(path, target, real_root)
            entry = Entry(path, rel, "symlink", mode=0o777, target=target)
        elif stat.S_ISDIR(info.st_mode):
            entry = Entry(path, rel, "dir", mode=mode)
        elif stat.S_ISREG(info.st_mode):
            entry = Entry(path, rel, "file", mode=mode)
        else:
            kind = ("a FIFO" if stat.S_ISFIFO(info.st_mode) else
                    "a socket" if stat.S_ISSOCK(info.st_mode) else "a device file")
            raise MediaError(f"{path} is {kind}; images hold files, folders and symlinks only: "
                             "remove it from the source tree")
        _attach(parent, entry, joliet)
        if entry.kind == "dir":
            _fill(entry, real_root, joliet)


def _check_link(path: Path, target: str, real_root: Path) -> None:
    if target.startswith("/"):
        raise MediaError(f"{path} is a symlink to the absolute path {target}, which would point "
                         "outside the image on whatever machine mounts it; make it relative or "
                         "replace it with the file")
    resolved = Path(os.path.normpath(path.parent.resolve() / target))
    if resolved != real_root and real_root not in resolved.parents:
        raise MediaError(f"{path} is a symlink to {target}, outside the source tree "
                         f"{real_root}; symlinks are stored, never followed, so it would dangle: "
                         "copy the file in instead")


def walk(entry: Entry) -> list[Entry]:
    """Every entry below ``entry`` (not itself), parents before children."""
    found = []
    for child in entry.children:
        found.append(child)
        if child.kind == "dir":
            found += walk(child)
    return found
