"""The one waiting primitive: poll a condition until it holds or time runs out."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from vboxlab.errors import WaitTimeout

T = TypeVar("T")


def wait_until(
    attempt: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    max_interval: float = 1.0,
    last_seen: Callable[[], str] | None = None,
    abort: Callable[[], None] | None = None,
) -> T:
    """Call ``attempt`` until it returns something other than None or False.

    ``abort`` is called before each try and may raise to stop early (a VM that
    died). On timeout, :class:`WaitTimeout` names ``what`` and, when given, what
    ``last_seen`` reports about the last try.

    >>> wait_until(lambda: 42, timeout=1, what="the answer")
    42
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        if abort is not None:
            abort()
        result = attempt()
        if result is not None and result is not False:
            return result
        now = time.monotonic()
        if now >= deadline:
            detail = f"; last try: {last_seen()}" if last_seen is not None else ""
            raise WaitTimeout(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(min(delay, max(0.0, deadline - now)))
        delay = min(delay * 1.5, max_interval)
