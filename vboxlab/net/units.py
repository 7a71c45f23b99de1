"""Units of link properties: durations, percentages, rates and sizes, parsed strictly.

>>> parse_duration("80ms"), parse_percent("2%"), parse_rate("10mbit"), parse_size("64k")
(0.08, 0.02, 10000000, 65536)
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(\d{1,15}(?:\.\d{1,15})?)"
MAX_NUMBER = 1e12  # far beyond any useful delay, rate or size; refuses overflowing input
_DURATION = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_RATE = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000,
         "bps": 8, "kbps": 8_000, "mbps": 8_000_000, "gbps": 8_000_000_000}
_SIZE = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2}


def _split(value: object, what: str, example: str) -> tuple[float, str]:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a value such as {example!r}, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value > MAX_NUMBER:
            raise ValueError(f"{what} {value!r} is not a usable number")
        return float(value), ""
    match = re.fullmatch(_NUMBER + r"\s*([a-zA-Z%]*)", str(value).strip())
    if not match:
        raise ValueError(f"{what} {value!r} is not a number with a unit such as {example!r}")
    number = float(match.group(1))
    if number > MAX_NUMBER:
        raise ValueError(f"{what} {value!r} is too large")
    return number, match.group(2).lower()


def parse_duration(value: object) -> float:
    """Seconds from '80ms', '1.5s', '500us' (a bare number is milliseconds)."""
    number, unit = _split(value, "duration", "80ms")
    if unit == "":
        return number / 1000
    if unit not in _DURATION:
        raise ValueError(f"duration {value!r}: unknown unit {unit!r}; use us, ms or s")
    return number * _DURATION[unit]


def parse_percent(value: object) -> float:
    """A fraction from '2%' or '0.5%' (a bare number is a percentage too)."""
    number, unit = _split(value, "percentage", "2%")
    if unit not in ("", "%"):
        raise ValueError(f"percentage {value!r}: write it like '2%'")
    if number > 100:
        raise ValueError(f"percentage {value!r} is over 100%")
    return number / 100


def parse_rate(value: object) -> int:
    """Bits per second from '10mbit', '512kbit', '1gbit' or '2mbps' (bytes)."""
    number, unit = _split(value, "rate", "10mbit")
    if unit not in _RATE:
        raise ValueError(f"rate {value!r}: unknown unit {unit or '(none)'!r}; use kbit, mbit, "
                         "gbit (or kbps, mbps for bytes)")
    bits = int(number * _RATE[unit])
    if bits <= 0:
        raise ValueError(f"rate {value!r} must be above zero; leave it out for no limit")
    if bits > 1_000_000_000_000:
        raise ValueError(f"rate {value!r} is over 1 Tbit/s; leave it out for no limit")
    return bits


def parse_size(value: object) -> int:
    """Bytes from '64k', '1m', '1500' or '1500b'."""
    number, unit = _split(value, "size", "64k")
    if unit not in _SIZE:
        raise ValueError(f"size {value!r}: unknown unit {unit!r}; use b, k or m")
    size = int(number * _SIZE[unit])
    if size > 1 << 30:
        raise ValueError(f"size {value!r} is over 1 GiB")
    return size
