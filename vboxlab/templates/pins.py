"""Template pins: ``vboxlab-templates.lock`` in the project says which version a bare name means.

    # written by `vboxlab templates pin`; `template="debian-12"` then means 1.0.0
    [pins]
    debian-12 = "1.0.0"

The file is looked for in the working folder (where pytest and the CLI run), or
at ``$VBOXLAB_PINS``. ``outdated`` and ``prune`` read it too.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from vboxlab.errors import ConfigError
from vboxlab.templates.versions import parse_version

PINS_FILE = "vboxlab-templates.lock"


def pins_path() -> Path:
    return Path(os.environ.get("VBOXLAB_PINS") or Path.cwd() / PINS_FILE)


def read_pins(path: Path | None = None) -> dict[str, str]:
    """Template name -> pinned version ({} without a pins file)."""
    path = path or pins_path()
    if not path.is_file():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    pins = data.get("pins", {})
    if not isinstance(pins, dict) or set(data) - {"pins"}:
        raise ConfigError(f"{path}: expected only a [pins] table of NAME = \"VERSION\"")
    for name, version in pins.items():
        if not isinstance(version, str):
            raise ConfigError(f"{path}: pins.{name}: give the version as a string, "
                              f"such as \"1.0.0\"")
        parse_version(version)
    return dict(pins)


def write_pin(name: str, version: str | None, path: Path | None = None) -> dict[str, str]:
    """Pin ``name`` to ``version`` (None: unpin); returns all pins."""
    path = path or pins_path()
    pins = read_pins(path)
    if version is None:
        pins.pop(name, None)
    else:
        parse_version(version)
        pins[name] = version
    lines = ["# vboxlab template pins: `template=\"NAME\"` means the version below.",
             "# Written by `vboxlab templates pin`; keep it in version control.", "[pins]"]
    lines += [f'{n} = "{v}"' for n, v in sorted(pins.items())]
    scratch = path.with_name(f".{path.name}.tmp")
    scratch.write_text("\n".join(lines) + "\n")
    scratch.replace(path)
    return pins
