"""vboxlab: a pytest plugin that turns a test function into an experiment on real machines."""

from __future__ import annotations

__version__ = "0.1.0"
