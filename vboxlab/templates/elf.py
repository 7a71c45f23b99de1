"""Shared-library closure of ELF executables inside an unpacked Debian sysroot."""

from __future__ import annotations

from pathlib import Path

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from vboxlab.errors import BuildError

LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "usr/lib64", "lib",
                "usr/lib")


def _needed_and_interp(path: Path) -> tuple[list[str], str | None]:
    with path.open("rb") as handle:
        elf = ELFFile(handle)
        needed: list[str] = []
        interp: str | None = None
        for segment in elf.iter_segments():
            if segment["p_type"] == "PT_INTERP":
                interp = str(segment.get_interp_name())  # type: ignore[attr-defined]
        for section in elf.iter_sections():
            if isinstance(section, DynamicSection):
                needed.extend(str(tag.needed) for tag in section.iter_tags() if  # type: ignore[attr-defined]
                              tag.entry.d_tag == "DT_NEEDED")
        return needed, interp


def _find(sysroot: Path, soname: str) -> Path | None:
    for folder in LIBRARY_DIRS:
        candidate = sysroot / folder / soname
        if candidate.exists():
            return candidate
    return None


def library_closure(sysroot: Path, binaries: list[Path]) -> dict[str, Path]:
    """Map image path (``/lib/...``) to the sysroot file for every library needed.

    Raises a BuildError naming the library that no unpacked package provides.
    """
    result: dict[str, Path] = {}
    todo = list(binaries)
    done: set[Path] = set()
    while todo:
        current = todo.pop()
        if current in done:
            continue
        done.add(current)
        needed, interp = _needed_and_interp(current)
        if interp is not None and interp not in result:
            found = sysroot / interp.lstrip("/")
            if not found.exists():
                raise BuildError(f"{current.name} needs the loader {interp}, not in the packages")
            result[interp] = found.resolve()
        for soname in needed:
            found_lib = _find(sysroot, soname)
            if found_lib is None:
                raise BuildError(
                    f"{current.name} needs {soname}, which none of the unpacked packages "
                    "provides; add the Debian package that ships it to the template's packages")
            image_path = f"/lib/x86_64-linux-gnu/{soname}"
            if image_path not in result:
                result[image_path] = found_lib.resolve()
                todo.append(found_lib.resolve())
    return result
