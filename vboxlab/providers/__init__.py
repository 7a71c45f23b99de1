"""Providers, found through the ``vboxlab.providers`` entry-point group and imported on use."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from vboxlab.errors import ConfigError
from vboxlab.providers.base import MachineSpec, MachineState, Provider, ProviderMachine

#: used when vboxlab runs from a source tree that was never installed
_BUILTIN = {"qemu": "vboxlab.providers.qemu:QemuProvider"}


def available() -> dict[str, str]:
    """Provider name -> ``module:attribute``."""
    found = dict(_BUILTIN)
    for point in entry_points(group="vboxlab.providers"):
        found[point.name] = point.value
    return found


def load_provider(name: str, **options: Any) -> Provider:
    """Import and instantiate the provider called ``name``."""
    known = available()
    if name not in known:
        raise ConfigError(f"unknown provider {name!r}; available providers: "
                          f"{', '.join(sorted(known))}")
    module_name, _, attribute = known[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    provider: Provider = factory(**options)
    return provider


__all__ = ["MachineSpec", "MachineState", "Provider", "ProviderMachine", "available",
           "load_provider"]
