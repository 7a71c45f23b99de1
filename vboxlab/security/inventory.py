"""What is installed on a machine: Debian packages from dpkg, or a template's manifest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from debian.deb822 import Packages

from vboxlab.errors import ScanError

if TYPE_CHECKING:
    from vboxlab.machine import Machine

DPKG_STATUS = "/var/lib/dpkg/status"
_SOURCE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9+.-]*)(?:\s+\((?P<version>[^)]+)\))?$")


@dataclass(frozen=True)
class InstalledPackage:
    """One installed binary package and the source package it was built from."""

    name: str
    version: str
    source: str
    source_version: str


@dataclass(frozen=True)
class Inventory:
    """A machine's packages and where the list came from."""

    machine: str
    packages: tuple[InstalledPackage, ...]
    origin: str  # "dpkg status" or "template manifest tiny 1.0.0"

    def __len__(self) -> int:
        return len(self.packages)


def parse_dpkg_status(text: str) -> list[InstalledPackage]:
    """The installed packages in dpkg's status file (half-installed ones left out)."""
    found = []
    for para in Packages.iter_paragraphs(text.splitlines(), use_apt_pkg=False):
        if "Package" not in para or "Version" not in para:
            continue
        if para.get("Status", "").split()[-1:] != ["installed"]:
            continue
        source, source_version = source_of(para["Package"], para["Version"],
                                           para.get("Source", ""))
        found.append(InstalledPackage(para["Package"], para["Version"], source, source_version))
    return found


def source_of(package: str, version: str, field: str) -> tuple[str, str]:
    """(source, source version) from a ``Source:`` field, which may name a version or be absent."""
    match = _SOURCE.match(field.strip()) if field else None
    if match is None:
        return package, version
    return match["name"], match["version"] or version


def from_machine(machine: Machine) -> Inventory:
    """The machine's packages: dpkg's status file, else its template's manifest."""
    result = machine.execute(f"cat {DPKG_STATUS}")
    if result.succeeded and result.stdout.strip():
        return Inventory(machine.name, tuple(parse_dpkg_status(result.stdout)), "dpkg status")
    template = getattr(machine.handle, "template", None)
    if not template:
        raise ScanError(f"{machine.name} has no {DPKG_STATUS} and no template manifest to list "
                        "its packages")
    return from_manifest(machine.name, f"{template[0]}@{template[1]}")


def from_manifest(machine: str, request: str) -> Inventory:
    """A template's packages as its manifest lists them (``name=version`` pins)."""
    from vboxlab.templates.repository import TemplateRepository

    built = TemplateRepository().built(request)
    pins = built.manifest.get("packages", [])
    if not isinstance(pins, list) or not pins:
        raise ScanError(f"template {request}'s manifest lists no packages (built by an older "
                        "vboxlab?); rebuild it with vboxlab templates build --force")
    packages = []
    for pin in pins:
        name, _, version = str(pin).partition("=")
        packages.append(InstalledPackage(name, version, name, version))
    return Inventory(machine, tuple(packages),
                     f"template manifest {built.template.name} {built.template.version}")
