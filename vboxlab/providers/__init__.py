"""Providers, found through the ``vboxlab.providers`` entry-point group and imported on use.

A provider is a class (or factory) taking :class:`ProviderOptions`; the built-in
ones (``qemu``, ``netns``) are registered the same way as any other and imported
only when a lab first asks for them, so ``import vboxlab`` needs neither QEMU
nor root.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from vboxlab.errors import ConfigError
from vboxlab.providers.base import (
    Capability,
    MachineSpec,
    MachineState,
    Provider,
    ProviderMachine,
    ProviderOptions,
    require,
    supports,
)

#: used when vboxlab runs from a source tree that was never installed
_BUILTIN = {"qemu": "vboxlab.providers.qemu:QemuProvider",
            "netns": "vboxlab.providers.netns:NetnsProvider",
            "libvirt": "vboxlab.providers.libvirt:LibvirtProvider"}


def available() -> dict[str, str]:
    """Provider name -> ``module:attribute``."""
    found = dict(_BUILTIN)
    for point in entry_points(group="vboxlab.providers"):
        found[point.name] = point.value
    return found


def load_provider(name: str, options: ProviderOptions | None = None) -> Provider:
    """Import and instantiate the provider called ``name``."""
    known = available()
    if name not in known:
        raise ConfigError(f"unknown provider {name!r}; available providers: "
                          f"{', '.join(sorted(known))}")
    module_name, _, attribute = known[name].partition(":")
    factory = getattr(importlib.import_module(module_name), attribute)
    provider: Provider = factory(options or ProviderOptions())
    return provider


__all__ = ["Capability", "MachineSpec", "MachineState", "Provider", "ProviderMachine",
           "ProviderOptions", "available", "load_provider", "require", "supports"]
