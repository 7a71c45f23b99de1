"""Lynis as a second compliance engine: copied into the guest, run there, its report parsed.

The host's Lynis (Debian package ``lynis``) is copied into a private folder in
the guest and run with ``--usecwd``; its test PKGS-7392 (``apt-get update``) is
skipped. Under TCG a full audit of a Debian guest takes over a quarter of an
hour (every test forks many processes); ``groups`` runs a subset
(``--tests-from-group``), which is what tests and CI use.
"""

from __future__ import annotations

import re
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vboxlab.errors import ConfigError, ScanError, ScanFailed
from vboxlab.hosttools import require
from vboxlab.security.results import Case, text_table

if TYPE_CHECKING:
    from vboxlab.machine import Machine

LYNIS_SHARE = Path("/usr/share/lynis")
LYNIS_PROFILE = Path("/etc/lynis/default.prf")
GUEST_DIR = "/tmp/vboxlab-lynis"
ALWAYS_SKIPPED = ("PKGS-7392",)  # runs apt-get update: no network at test time
_GROUP = re.compile(r"^[a-z][a-z ,_-]*$")


@dataclass(frozen=True)
class LynisItem:
    """A warning or suggestion of Lynis: its test id, text and details."""

    test: str
    text: str
    details: str = ""

    def describe(self) -> str:
        return f"{self.test}: {self.text}" + (f" ({self.details})" if self.details else "")


@dataclass
class LynisReport:
    """Lynis's verdict: the hardening index, warnings and suggestions."""

    target: str
    version: str
    hardening_index: int | None
    warnings: list[LynisItem] = field(default_factory=list)
    suggestions: list[LynisItem] = field(default_factory=list)
    tests_executed: list[str] = field(default_factory=list)
    tests_skipped: list[str] = field(default_factory=list)
    groups: str = "all"
    seconds: float = 0.0
    kind: str = "lynis"

    def __bool__(self) -> bool:
        return bool(self.warnings)

    def assert_no_warnings(self) -> None:
        if self.warnings:
            raise ScanFailed(f"{self.summary()}\n" + "\n".join(
                f"  WARNING {w.describe()}" for w in self.warnings))

    def summary(self) -> str:
        index = "n/a" if self.hardening_index is None else str(self.hardening_index)
        return (f"{self.target}: Lynis {self.version} ({self.groups}): hardening index {index}, "
                f"{len(self.warnings)} warnings, {len(self.suggestions)} suggestions, "
                f"{len(self.tests_executed)} tests run in {self.seconds:.0f} s")

    def table(self) -> str:
        rows = [["warning", w.test, w.text[:90]] for w in self.warnings]
        rows += [["suggestion", s.test, s.text[:90]] for s in self.suggestions]
        return text_table(["kind", "test", "text"], rows)

    def to_json(self) -> dict[str, Any]:
        def items(found: list[LynisItem]) -> list[dict[str, str]]:
            return [{"test": i.test, "text": i.text, "details": i.details} for i in found]

        return {"kind": self.kind, "target": self.target, "version": self.version,
                "groups": self.groups, "hardening_index": self.hardening_index,
                "summary": self.summary(), "seconds": round(self.seconds, 3),
                "warnings": items(self.warnings), "suggestions": items(self.suggestions),
                "tests_executed": self.tests_executed, "tests_skipped": self.tests_skipped}

    def cases(self) -> list[Case]:
        classname = f"lynis.{self.target}"
        return ([Case(w.test, classname, failure=w.describe()) for w in self.warnings]
                + [Case(s.test, classname, output=s.describe()) for s in self.suggestions])


def parse_report(text: str, target: str) -> LynisReport:
    """Lynis's report.dat (``key=value``, lists as ``key[]=a|b|c|``)."""
    values: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or line.startswith("#"):
            continue
        if key.endswith("[]"):
            lists.setdefault(key[:-2], []).append(value)
        else:
            values[key] = value

    def items(name: str) -> list[LynisItem]:
        found = []
        for entry in lists.get(name, []):
            parts = [*entry.split("|"), "", ""]
            details = parts[2] if parts[2] not in ("-", "") else ""
            found.append(LynisItem(parts[0], parts[1], details))
        return found

    index = values.get("hardening_index", "")
    return LynisReport(
        target=target, version=values.get("lynis_version", "?"),
        hardening_index=int(index) if index.isdigit() else None,
        warnings=items("warning"), suggestions=items("suggestion"),
        tests_executed=[t for t in values.get("tests_executed", "").split("|") if t],
        tests_skipped=[t for t in values.get("tests_skipped", "").split("|") if t])


def run_lynis(machine: Machine, *, groups: str | None = None, skip: tuple[str, ...] = (),
              timeout: float = 3600) -> LynisReport:
    """Copy the host's Lynis into ``machine``, audit it there, and parse the report."""
    lynis = require("lynis", "to run Lynis in a guest (apt-get install lynis)")
    if groups is not None and not _GROUP.match(groups):
        raise ConfigError(f"Lynis groups {groups!r}: give group names like 'ssh,authentication'")
    for test in skip:
        if not re.fullmatch(r"[A-Z]+-\d+", test):
            raise ConfigError(f"Lynis test id {test!r}: give ids like PKGS-7392")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vboxlab-lynis-") as scratch:
        bundle = Path(scratch) / "lynis"
        shutil.copytree(LYNIS_SHARE, bundle, symlinks=False)
        shutil.copy2(lynis, bundle / "lynis")
        plugins = LYNIS_PROFILE.parent / "plugins"
        if plugins.is_dir():
            shutil.copytree(plugins, bundle / "plugins")
        profile = LYNIS_PROFILE.read_text() if LYNIS_PROFILE.exists() else ""
        skipped = "".join(f"skip-test={t}\n" for t in (*ALWAYS_SKIPPED, *skip))
        (bundle / "default.prf").write_text(profile + "\n# vboxlab\n" + skipped)
        machine.execute(f"rm -rf {GUEST_DIR}")
        machine.copy_to(bundle, GUEST_DIR)
    argv = ["sh", "./lynis", "audit", "system", "--usecwd", "--quick", "--no-colors",
            "--no-log", "--report-file", f"{GUEST_DIR}/report.dat"]
    if groups is not None:
        argv += ["--tests-from-group", groups]
    try:
        result = machine.execute(f"cd {GUEST_DIR} && chmod 0640 include/* db/* default.prf "
                                 f"&& {shlex.join(argv)}", timeout=timeout)
        report_text = machine.execute(f"cat {GUEST_DIR}/report.dat").stdout
    finally:
        machine.execute(f"rm -rf {GUEST_DIR}")
    if not report_text.strip():
        raise ScanError(f"{machine.name}: Lynis wrote no report (exit status {result.rc}): "
                        f"{(result.stderr or result.stdout)[-800:]}")
    report = parse_report(report_text, machine.name)
    report.groups = groups or "all"
    report.seconds = time.monotonic() - started
    return report
