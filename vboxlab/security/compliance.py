"""Compliance checking: profiles of rules (data, in YAML) run against a machine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vboxlab.errors import ConfigError, ScanFailed, VboxlabError
from vboxlab.security.checks import AnyCheck, Outcome, Probe, Status
from vboxlab.security.datafiles import load_yaml, shipped
from vboxlab.security.results import Case, Severity, text_table

if TYPE_CHECKING:
    from vboxlab.machine import Machine


class Rule(BaseModel):
    """One rule: what it checks, why, how bad a failure is, and where it comes from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str = Field(min_length=3)
    severity: str = "medium"
    rationale: str = ""
    reference: str = ""
    check: AnyCheck

    @field_validator("severity")
    @classmethod
    def _known_severity(cls, value: str) -> str:
        if value.upper() not in Severity.__members__:
            raise ValueError(f"severity {value!r}: use low, medium, high or critical")
        return value.lower()


class Profile(BaseModel):
    """A named list of rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    title: str
    description: str = ""
    rules: list[Rule] = Field(min_length=1)

    def only(self, rule_id: str) -> Profile:
        """This profile cut down to one rule."""
        chosen = [r for r in self.rules if r.id == rule_id]
        if not chosen:
            raise ConfigError(f"profile {self.name} has no rule {rule_id!r}")
        return self.model_copy(update={"rules": chosen})


def profile_folders(extra: list[Path] | None = None) -> list[Path]:
    return [*(extra or []), shipped("profiles")]


def load_profile(name_or_path: str | Path, folders: list[Path] | None = None) -> Profile:
    """A profile by path, or by name (``ssh-baseline``): ``folders`` first, then the shipped."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        if not str(name_or_path).replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"compliance profile {name_or_path!r}: give a profile name "
                              "(like ssh-baseline) or a .yaml file")
        candidates = [f / f"{name_or_path}.yaml" for f in profile_folders(folders)]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            known = sorted({p.stem for f in profile_folders(folders) if f.is_dir()
                            for p in f.glob("*.yaml")})
            raise ConfigError(f"no compliance profile {name_or_path!r}; profiles: "
                              f"{', '.join(known)}")
        path = found
    raw = load_yaml(path, "compliance profile")
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_where(raw, e["loc"]) + f": {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"compliance profile {path}: {problems}") from None
    ids = [r.id for r in profile.rules]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"compliance profile {path}: rule ids used twice: "
                          f"{', '.join(duplicates)}")
    return profile


def _where(raw: Any, loc: tuple[Any, ...]) -> str:
    """``rules[3] (id ssh-x).check.kind`` from a pydantic error location."""
    parts: list[str] = []
    node = raw
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and key < len(node):
            node = node[key]
            rid = node.get("id") if isinstance(node, dict) else None
            parts[-1] += f"[{key}]" + (f" (id {rid})" if rid else "")
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    status: Status
    evidence: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.rule.id, "title": self.rule.title, "severity": self.rule.severity,
                "reference": self.rule.reference, "status": str(self.status),
                "evidence": self.evidence}


@dataclass
class ComplianceReport:
    """Each rule's result on one machine."""

    target: str
    profile: Profile
    results: list[RuleResult] = field(default_factory=list)
    seconds: float = 0.0
    kind: str = "compliance"

    def of(self, status: Status) -> list[RuleResult]:
        return [r for r in self.results if r.status is status]

    @property
    def failed(self) -> list[RuleResult]:
        return self.of(Status.FAIL)

    @property
    def errors(self) -> list[RuleResult]:
        return self.of(Status.ERROR)

    @property
    def passed(self) -> bool:
        return not self.failed and not self.errors

    def status(self, rule_id: str) -> Status:
        """The result of one rule, by id."""
        for result in self.results:
            if result.rule.id == rule_id:
                return result.status
        raise KeyError(f"profile {self.profile.name} has no rule {rule_id!r}")

    def assert_passed(self) -> None:
        """Fail with each failing or erroring rule and its evidence."""
        if not self.passed:
            bad = self.failed + self.errors
            raise ScanFailed(
                f"{self.summary()}\n" + "\n".join(
                    f"  {r.status.upper()} {r.rule.id} [{r.rule.severity}] {r.rule.title}: "
                    f"{r.evidence}" for r in bad))

    def summary(self) -> str:
        counts = ", ".join(f"{len(self.of(s))} {s}" for s in Status)
        return (f"{self.target}, profile {self.profile.name}: {len(self.results)} rules: "
                f"{counts} ({len(self.results) / max(self.seconds, 1e-6):.1f} rules/s)")

    def __repr__(self) -> str:
        return f"<ComplianceReport {self.summary()}>"

    def table(self) -> str:
        return text_table(["rule", "status", "severity", "evidence"],
                          [[r.rule.id, str(r.status), r.rule.severity, r.evidence[:100]]
                           for r in self.results])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "profile": self.profile.name,
                "summary": self.summary(), "seconds": round(self.seconds, 3),
                "results": [r.to_json() for r in self.results]}

    def cases(self) -> list[Case]:
        cases = []
        for r in self.results:
            text = f"{r.rule.title}: {r.evidence}" + (
                f" ({r.rule.reference})" if r.rule.reference else "")
            cases.append(Case(
                name=f"{r.rule.id}", classname=f"compliance.{self.target}.{self.profile.name}",
                failure=text if r.status is Status.FAIL else None,
                error=text if r.status is Status.ERROR else None,
                skipped=text if r.status is Status.NOT_APPLICABLE else None, output=text))
        return cases


def evaluate_rule(probe: Probe, rule: Rule) -> RuleResult:
    """One rule's result; an infrastructure failure of its check is an ``error`` result."""
    try:
        outcome = rule.check.evaluate(probe)
    except VboxlabError as exc:
        outcome = Outcome(Status.ERROR, f"{type(exc).__name__}: {exc}")
    return RuleResult(rule, outcome.status, outcome.evidence)


def check_compliance(machine: Machine, profile: Profile) -> ComplianceReport:
    """Run every rule of ``profile`` on ``machine``."""
    started = time.monotonic()
    report = ComplianceReport(machine.name, profile)
    probe = Probe(machine)
    report.results = [evaluate_rule(probe, rule) for rule in profile.rules]
    report.seconds = time.monotonic() - started
    return report
