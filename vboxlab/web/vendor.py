"""The vendored vis-network file and the styles it injects, allowed by hash in the CSP.

vis-network's standalone build adds its CSS at load time as ``<style>``
elements (calls of its style injector with string literals at the top of the
file). Rather than allowing every inline style (``'unsafe-inline'``), the
builder page's Content-Security-Policy lists the SHA-256 of each of those
strings, read from the vendored file itself, so a changed file cannot slip
other styles in, and no inline script is ever allowed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

#: the injector is called with the CSS as a string literal, in the first part of the file
_INJECTED = re.compile(r"""(?<![\w$.])A\((?:"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)')\)""")
_HEAD = 400_000
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/"}


def _unescape(literal: str) -> str:
    """A JavaScript string literal's value (the escapes minified CSS uses)."""
    def one(match: re.Match[str]) -> str:
        code = match.group(1)
        if code[0] == "x":
            return chr(int(code[1:], 16))
        if code[0] == "u":
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, code)

    return re.sub(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", one, literal)


@functools.cache
def injected_style_hashes(path: Path) -> tuple[str, ...]:
    """CSP hash sources (``'sha256-...'``) of the CSS the script at ``path`` injects."""
    head = path.read_text(encoding="utf-8")[:_HEAD]
    # the injector inserts each <style> empty, then fills it: both states are checked
    hashes = [_source("")]
    for match in _INJECTED.finditer(head):
        literal = match.group(1) if match.group(1) is not None else match.group(2)
        css = _unescape(literal)
        if "{" not in css:
            continue  # the same one-letter name is used by other functions further on
        hashes.append(_source(css))
    return tuple(hashes)


def _source(css: str) -> str:
    return f"'sha256-{base64.b64encode(hashlib.sha256(css.encode()).digest()).decode()}'"
