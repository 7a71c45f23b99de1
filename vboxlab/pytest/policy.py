"""What a test does when the host lacks a capability: skip outside CI, fail under CI.

Tests import these helpers (not the plugin): a missing tool, root or a device
skips a test with the reason on a developer's machine, and fails it under
``CI=true``, where every test must run.

>>> in_ci() in (True, False)
True
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True under CI (``CI`` set to anything but empty/0/false/no)."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing_capability(reason: str) -> NoReturn:
    """Skip outside CI; under CI a missing capability is a failure."""
    if in_ci():
        pytest.fail(f"missing capability under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def require_tool(tool: str, package: str) -> str:
    """The path of a host tool a test needs; skips outside CI and fails under CI if missing."""
    path = shutil.which(tool)
    if path is None:
        missing_capability(f"{tool} is not installed (apt-get install {package})")
    return path


def require_root(what: str = "the test") -> None:
    """Skip outside CI (fail under CI) unless running as root."""
    if os.geteuid() != 0:
        missing_capability(f"{what} needs root on the host")
