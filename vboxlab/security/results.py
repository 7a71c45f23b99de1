"""What every scan returns: severities, result lines, JSON and JUnit XML."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from junit_xml import TestCase, TestSuite, to_xml_report_string

from vboxlab.errors import ConfigError


class Severity(enum.IntEnum):
    """Severity of a finding; ``UNKNOWN`` when the data gives none."""

    UNKNOWN = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str, *, what: str = "severity") -> Severity:
        """``"high"`` -> ``Severity.HIGH``; a clear error for anything else."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise ConfigError(f"{what} {text!r} is not a severity; use one of {names}") from None

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Case:
    """One line of a scan's JUnit suite: a rule, a finding or a port."""

    name: str
    classname: str
    failure: str | None = None  # why it failed, with the evidence
    error: str | None = None  # it could not be checked
    skipped: str | None = None  # not applicable
    output: str = ""


class ScanResult(Protocol):
    """The part of every scan result that reports use."""

    kind: str  # "ports", "vulnerabilities", "malware", "compliance"
    target: str

    def to_json(self) -> dict[str, Any]: ...

    def cases(self) -> list[Case]: ...

    def summary(self) -> str: ...

    def table(self) -> str: ...


def junit_suite(result: ScanResult, *, seconds: float = 0.0) -> TestSuite:
    """A JUnit test suite with one test case per rule, finding or port."""
    cases = []
    for case in result.cases():
        tc = TestCase(case.name, classname=case.classname, stdout=case.output or None)
        if case.failure is not None:
            tc.add_failure_info(message=case.failure.splitlines()[0][:200] if case.failure
                                else "failed", output=case.failure)
        if case.error is not None:
            tc.add_error_info(message=case.error.splitlines()[0][:200], output=case.error)
        if case.skipped is not None:
            tc.add_skipped_info(message=case.skipped)
        cases.append(tc)
    return TestSuite(f"vboxlab.{result.kind}.{result.target}", cases,
                     properties={"summary": result.summary(), "seconds": f"{seconds:.3f}"})


def write_junit(results: Sequence[ScanResult], path: Path) -> Path:
    """Write the results as one JUnit XML file (a suite per scan)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_xml_report_string([junit_suite(r) for r in results]))
    return path


def write_json(results: Iterable[ScanResult], path: Path) -> Path:
    """Write the results as a JSON list."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([r.to_json() for r in results], indent=2, sort_keys=True) + "\n")
    return path


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain, aligned text table (failing assertions and report sections print it)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    return "\n".join(lines)


@dataclass
class Timing:
    """How long a scan took and what it ran (shown in reports)."""

    seconds: float = 0.0
    commands: list[str] = field(default_factory=list)
