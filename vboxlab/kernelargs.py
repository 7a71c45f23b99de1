"""The characters allowed in kernel parameters vboxlab passes on (a VM's extra arguments,
a boot menu entry's command line): enough for ``key=value`` lists, nothing that could
end a configuration line or reach a shell.

>>> check_kernel_args("loglevel=7 lab.role=web")
'loglevel=7 lab.role=web'
"""

from __future__ import annotations

import re

MAX_LENGTH = 1024
_SAFE = re.compile(r"[A-Za-z0-9_.,:=/@+%~ -]*")


def check_kernel_args(value: object) -> str:
    """Return ``value`` if it is a safe kernel command line, else raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"kernel parameters must be text, not {value!r}")
    if not _SAFE.fullmatch(value):
        bad = sorted({c for c in value if not _SAFE.fullmatch(c)})
        raise ValueError(f"characters {bad} are not allowed in kernel parameters; use "
                         "letters, digits, spaces and _ . , : = / @ + % ~ -")
    if len(value) > MAX_LENGTH:
        raise ValueError(f"kernel parameters are longer than {MAX_LENGTH} characters")
    return value
