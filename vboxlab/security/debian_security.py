"""Advisories from the Debian security suite: an installed package older than the suite's.

The suite's package lists are apt's own (``apt-get update`` refreshes them).
The CVE ids an update fixes come from the updated package's changelog: the
smallest binary package of that source is fetched with ``apt-get download``
once and the ids cached.
"""

from __future__ import annotations

import gzip
import io
import json
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from debian.changelog import Changelog
from debian.debian_support import NativeVersion

from vboxlab.errors import ScanError
from vboxlab.hosttools import require
from vboxlab.paths import cache_dir
from vboxlab.security.aptlists import LISTS, ListedPackage, package_lists, read_list, stanzas
from vboxlab.security.inventory import InstalledPackage, Inventory
from vboxlab.security.vulns import Finding

CVE = re.compile(r"\bCVE-\d{4}-\d{4,7}\b")
DOWNLOAD_TIMEOUT = 300


@dataclass(frozen=True)
class SuiteUpdate:
    """A package the machine has in an older version than the security suite."""

    package: InstalledPackage
    fixed: ListedPackage


def newer(a: str, b: str) -> bool:
    """True if Debian version ``a`` sorts after ``b``."""
    return bool(NativeVersion(a) > NativeVersion(b))


class SecuritySuite:
    """The host's copy of a Debian security suite (``bookworm-security`` by default)."""

    def __init__(self, suite: str = "bookworm-security", *, lists: Path = LISTS,
                 cache: Path | None = None) -> None:
        paths = package_lists(suite, lists=lists)
        if not paths:
            raise ScanError(
                f"apt has no package list of {suite} in {lists}; add the suite to apt's sources "
                f"(deb http://deb.debian.org/debian-security {suite} main) and run "
                "apt-get update")
        self.suite = suite
        self.lists = paths
        self.cache = cache or cache_dir() / "advisories"
        self.packages: dict[str, ListedPackage] = {}
        self.by_source: dict[tuple[str, str], list[ListedPackage]] = {}
        for path in paths:
            for listed in stanzas(read_list(path)):
                old = self.packages.get(listed.name)
                if old is None or newer(listed.version, old.version):
                    self.packages[listed.name] = listed
                self.by_source.setdefault((listed.source, listed.source_version), []).append(
                    listed)
        self.description = f"Debian {suite} package lists ({len(self.packages)} packages)"

    def __repr__(self) -> str:
        return f"<SecuritySuite {self.suite}: {len(self.packages)} packages>"

    def findings(self, inventory: Inventory, *, cve_ids: bool) -> list[Finding]:
        """A finding per installed package behind the suite, with the update's CVE ids."""
        found = []
        for update in self.updates(inventory.packages):
            ids, note = self.cve_ids(update) if cve_ids else ([], "CVE ids not looked up")
            found.append(Finding(tuple(ids) or (f"{self.suite}:{update.fixed.source}",),
                                 update.package.name, update.fixed.source,
                                 update.package.version, update.fixed.version,
                                 "debian-security", note=note))
        return found

    def updates(self, installed: tuple[InstalledPackage, ...]) -> list[SuiteUpdate]:
        """The installed packages the suite has a newer version of."""
        found = []
        for package in installed:
            listed = self.packages.get(package.name)
            if listed is not None and newer(listed.version, package.version):
                found.append(SuiteUpdate(package, listed))
        return found

    def cve_ids(self, update: SuiteUpdate) -> tuple[list[str], str]:
        """(CVE ids fixed between the installed and the suite's version, a note if unknown)."""
        fixed = update.fixed
        key = f"{fixed.source}_{fixed.source_version}_{update.package.source_version}"
        record = self.cache / "changelogs" / f"{re.sub(r'[^A-Za-z0-9.+_-]', '_', key)}.json"
        if record.exists():
            data = json.loads(record.read_text())
            return list(data["cves"]), str(data.get("note", ""))
        try:
            text = self._changelog(fixed)
        except ScanError as exc:
            return [], f"changelog not available: {exc}"
        ids = changelog_cves(text, update.package.source_version, fixed.source_version)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"cves": ids, "note": ""}))
        return ids, ""

    def _changelog(self, fixed: ListedPackage) -> str:
        """The Debian changelog shipped by a binary package of ``fixed``'s source."""
        siblings = sorted(self.by_source.get((fixed.source, fixed.source_version), [fixed]),
                          key=lambda p: p.size)
        errors = []
        for candidate in siblings[:4]:
            deb = self._download(candidate)
            text = _changelog_in(deb)
            if text is not None:
                return text
            errors.append(f"{candidate.name} ships no changelog")
        raise ScanError("; ".join(errors) or f"no binary package of {fixed.source}")

    def _download(self, listed: ListedPackage) -> Path:
        folder = self.cache / "debs"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / Path(listed.filename).name
        if target.exists():
            return target
        apt_get = require("apt-get", "to fetch the changelog of a security update")
        proc = subprocess.run([apt_get, "download", "-q", f"{listed.name}={listed.version}"],
                              cwd=folder, capture_output=True, text=True, check=False,
                              timeout=DOWNLOAD_TIMEOUT)
        if proc.returncode != 0 or not target.exists():
            raise ScanError(f"apt-get download {listed.name}={listed.version} failed: "
                            f"{proc.stderr.strip()[-300:]}")
        return target


def _changelog_in(deb: Path) -> str | None:
    """The text of usr/share/doc/*/changelog.Debian*.gz inside a .deb, if it has one."""
    proc = subprocess.run([require("dpkg-deb", "to read a package"), "--fsys-tarfile", str(deb)],
                          capture_output=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise ScanError(f"dpkg-deb could not read {deb.name}: {proc.stderr.decode()[-300:]}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        for member in tar.getmembers():
            parts = member.name.lstrip("./").split("/")
            if (member.isfile() and len(parts) == 5 and parts[:3] == ["usr", "share", "doc"]
                    and parts[4].startswith("changelog.Debian") and parts[4].endswith(".gz")):
                handle = tar.extractfile(member)
                if handle is not None:
                    return gzip.decompress(handle.read()).decode("utf-8", "replace")
    return None


def changelog_cves(text: str, installed: str, fixed: str) -> list[str]:
    """CVE ids named in the entries newer than ``installed`` up to ``fixed``, in order."""
    ids: list[str] = []
    for block in Changelog(text, strict=False):
        version = str(block.version)
        if newer(version, fixed):
            continue
        if not newer(version, installed):
            break
        for line in block.changes():
            for cve in CVE.findall(line):
                if cve not in ids:
                    ids.append(cve)
    return ids
