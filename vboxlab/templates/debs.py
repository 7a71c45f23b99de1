"""Files out of Debian packages without installing them on the host.

``apt-cache`` resolves names and versions, ``apt-get download`` fetches the
.deb files into the user's cache and ``dpkg-deb -x`` unpacks them into a folder.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vboxlab.errors import BuildError
from vboxlab.hosttools import require, run


@dataclass(frozen=True)
class Package:
    """One resolved binary package."""

    name: str
    version: str
    depends: tuple[str, ...]

    @property
    def pin(self) -> str:
        return f"{self.name}={self.version}"


def _parse_depends(value: str) -> list[str]:
    names = []
    for clause in value.split(","):
        first = clause.split("|")[0].strip()
        if first:
            names.append(first.split()[0].split(":")[0])
    return names


def resolve(names: list[str]) -> dict[str, Package]:
    """Candidate version and dependencies of each package, from apt's lists."""
    require("apt-cache", "to resolve Debian packages for a template build")
    if not names:
        return {}
    proc = subprocess.run(["apt-cache", "show", "--no-all-versions", *names],
                          capture_output=True, text=True, check=False)
    packages: dict[str, Package] = {}
    for stanza in proc.stdout.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            match = re.match(r"^([A-Za-z-]+):\s?(.*)$", line)
            if match:
                fields[match.group(1)] = match.group(2)
        if "Package" in fields and fields["Package"] not in packages:
            deps = _parse_depends(fields.get("Pre-Depends", "")) + _parse_depends(
                fields.get("Depends", ""))
            packages[fields["Package"]] = Package(fields["Package"], fields["Version"],
                                                  tuple(deps))
    missing = [n for n in names if n not in packages]
    if missing:
        raise BuildError(
            f"Debian package(s) {', '.join(missing)} not found in apt's package lists "
            f"({proc.stderr.strip() or 'no candidate'}); run `apt-get update` as root and retry"
        )
    return packages


def library_closure(roots: list[str]) -> dict[str, Package]:
    """``roots`` plus, recursively, every library package (lib*, zlib*) they depend on."""
    seen = resolve(roots)
    todo = [d for p in seen.values() for d in p.depends]
    while todo:
        wanted = sorted({d for d in todo if d not in seen and re.match(r"^(lib|zlib)", d)})
        if not wanted:
            break
        found = resolve(wanted)
        seen.update(found)
        todo = [d for p in found.values() for d in p.depends]
    return seen


def download(packages: list[Package], cache: Path) -> list[Path]:
    """Fetch the exact versions into ``cache`` (skipping those already there)."""
    require("apt-get", "to download Debian packages for a template build")
    cache.mkdir(parents=True, exist_ok=True)

    def deb_path(p: Package) -> Path:
        version = p.version.replace(":", "%3a")
        return cache / f"{p.name}_{version}_amd64.deb"

    def present(p: Package) -> Path | None:
        for candidate in (deb_path(p), cache / deb_path(p).name.replace("_amd64", "_all")):
            if candidate.is_file():
                return candidate
        return None

    missing = [p for p in packages if present(p) is None]
    if missing:
        proc = subprocess.run(["apt-get", "download", *(p.pin for p in missing)], cwd=cache,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(f"apt-get download failed: {proc.stderr.strip()[-1500:]}; check the "
                             "network and run `apt-get update` as root")
    paths = []
    for p in packages:
        path = present(p)
        if path is None:
            raise BuildError(f"apt-get download did not produce a .deb for {p.pin} in {cache}")
        paths.append(path)
    return paths


def extract(deb: Path, dest: Path) -> None:
    """Unpack a .deb's files into ``dest``."""
    require("dpkg-deb", "to unpack Debian packages")
    dest.mkdir(parents=True, exist_ok=True)
    run(["dpkg-deb", "-x", str(deb), str(dest)], what=f"unpacking {deb.name}", error=BuildError)
