"""The one name rule for everything a user names: labs, machines, nodes, segments, templates.

A name is 1-20 characters of lower-case ASCII letters, digits and single
hyphens, starting with a letter and not ending with a hyphen: a valid host
name everywhere (RFC 1123), short enough for QEMU's process name and for tap
device names, and free of ``--``, which vboxlab keeps for the segments it
makes between two nodes (``a--b``).

>>> check_name("web-1", "machine")
'web-1'
"""

from __future__ import annotations

import re

from vboxlab.errors import ConfigError

MAX_LENGTH = 20
NAME_RULE = (f"1-{MAX_LENGTH} lower-case letters (a-z), digits and single '-', starting with a "
             "letter and not ending with '-'")
_NAME = re.compile(r"[a-z](?:[a-z0-9]|-(?=[a-z0-9])){0,19}")  # MAX_LENGTH characters at most


def is_valid_name(name: object) -> bool:
    """True if ``name`` follows the rule."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: object, kind: str) -> str:
    """Return ``name`` if it follows the rule, else raise ConfigError naming ``kind``."""
    if not is_valid_name(name):
        raise ConfigError(f"invalid {kind} name {name!r}: use {NAME_RULE}")
    assert isinstance(name, str)
    return name
