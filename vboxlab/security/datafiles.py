"""The data vboxlab ships (rules, signatures, profiles): in the checkout, or inside the wheel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vboxlab.errors import ConfigError

_PACKAGE = Path(__file__).resolve().parent.parent


def shipped(kind: str) -> Path:
    """``fixtures/<kind>`` of a checkout, else ``vboxlab/_<kind>`` of an installed wheel."""
    checkout = _PACKAGE.parent / "fixtures" / kind
    return checkout if checkout.is_dir() else _PACKAGE / f"_{kind}"


def load_yaml(path: Path, what: str) -> Any:
    """A YAML file's data; a missing or broken file is a ConfigError naming it."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what} {path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
