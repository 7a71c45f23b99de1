"""The data vboxlab ships (rules, signatures, profiles): in the checkout, or inside the wheel."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent


def shipped(kind: str) -> Path:
    """``fixtures/<kind>`` of a checkout, else ``vboxlab/_<kind>`` of an installed wheel."""
    checkout = _PACKAGE.parent / "fixtures" / kind
    return checkout if checkout.is_dir() else _PACKAGE / f"_{kind}"
