"""Hooks that let other plugins extend a lab: ``pytest_vboxlab_*``, added in ``pytest_addhooks``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from vboxlab.lab import Lab
    from vboxlab.machine import Machine


@pytest.hookspec
def pytest_vboxlab_lab_created(lab: Lab, config: pytest.Config) -> None:
    """Called once the session's lab exists, before any machine boots."""


@pytest.hookspec
def pytest_vboxlab_machine_ready(machine: Machine, lab: Lab) -> None:
    """Called when a machine of the session's lab first answers its channel."""
