"""Template requests: ``tiny``, ``tiny@1.0.0``, ``debian-12>=1.1,<2`` (PEP 440 specifiers).

A request names a template and optionally constrains its version. Versions are
semantic (``1.2.3``) and compared as such through ``packaging``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from vboxlab.errors import ConfigError

_REQUEST = re.compile(r"^\s*(?P<name>[a-z][a-z0-9-]{0,30})\s*(?:@(?P<exact>[^\s]+)|"
                      r"(?P<spec>[<>=!~].*))?\s*$")


@dataclass(frozen=True)
class TemplateRequest:
    """What a test or command asked for."""

    name: str
    spec: SpecifierSet | None = None  # None: "the version the definition says"

    @classmethod
    def parse(cls, text: str) -> TemplateRequest:
        match = _REQUEST.fullmatch(text)
        if match is None:
            raise ConfigError(f"template {text!r}: write NAME, NAME@VERSION or NAME with version "
                              "constraints such as 'debian-12>=1.1,<2'")
        name, exact, spec = match.group("name", "exact", "spec")
        if exact is not None:
            spec = f"=={exact}"
        if spec is None:
            return cls(name)
        try:
            return cls(name, SpecifierSet(spec))
        except InvalidSpecifier:
            raise ConfigError(f"template {text!r}: {spec!r} is not a version constraint; use "
                              "operators such as ==1.0.0, >=1.1,<2 or ~=1.2") from None

    def matches(self, version: str) -> bool:
        return self.spec is None or self.spec.contains(parse_version(version), prereleases=True)

    def __str__(self) -> str:
        return self.name + (str(self.spec) if self.spec is not None else "")


def parse_version(text: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion:
        raise ConfigError(f"version {text!r} is not a semantic version such as 1.0.0") from None


def newest(versions: list[str]) -> str | None:
    """The highest of ``versions`` (None for none)."""
    return max(versions, key=parse_version, default=None)
