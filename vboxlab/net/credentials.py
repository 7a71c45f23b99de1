"""Credentials sent in clear text, found in a flow's first bytes.

What counts: HTTP basic authentication and form fields named like a password
(in a query string or a form body), FTP and POP3 ``USER``/``PASS``, IMAP
``LOGIN``, SMTP/IMAP/POP3 ``AUTH PLAIN`` and ``AUTH LOGIN``, and a Telnet login
(the server asked for a password and the client typed one). Secrets are never
shown whole: :attr:`Credential.secret` keeps the first character and the length.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vboxlab.net.flows import Flow

BASIC = re.compile(rb"(?im)^authorization:[ \t]*basic[ \t]+([A-Za-z0-9+/=]+)")
FORM_FIELD = re.compile(rb"(?i)(?:^|[?&\s])(pass(?:word)?|passwd|pwd)=([^&\s]+)")
USER_LINE = re.compile(rb"(?im)^USER[ \t]+(\S+)")
PASS_LINE = re.compile(rb"(?im)^PASS[ \t]+(\S+)")
IMAP_LOGIN = re.compile(rb"(?im)^\S+[ \t]+LOGIN[ \t]+(\S+)[ \t]+(\S+)")
AUTH_PLAIN = re.compile(rb"(?im)AUTH[ \t]+PLAIN(?:[ \t]+(\S+))?\r?\n(?:(\S+)\r?\n)?")
AUTH_LOGIN = re.compile(rb"(?im)AUTH[ \t]+LOGIN(?:[ \t]+(\S+))?\r?\n(?:(\S+)\r?\n)?(\S+)?")
PASSWORD_PROMPT = re.compile(rb"(?i)password[ \t]*:")
TELNET_COMMAND = re.compile(rb"\xff[\xfb-\xfe].|\xff\xfa.*?\xff\xf0|\xff.", re.S)


def mask(secret: str) -> str:
    """``h******* (8 characters)``: enough to recognise, not to reuse."""
    if not secret:
        return "(empty)"
    return f"{secret[0]}{'*' * (len(secret) - 1)} ({len(secret)} characters)"


@dataclass(frozen=True)
class Credential:
    """A credential seen in clear: how, whose, and the flow it crossed."""

    kind: str
    user: str | None
    secret: str  # masked
    flow: str

    def __str__(self) -> str:
        who = f" for user {self.user!r}" if self.user else ""
        return f"{self.kind} credentials{who} (password {self.secret}) in {self.flow}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "user": self.user, "secret": self.secret, "flow": self.flow}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def _b64(raw: bytes | None) -> bytes | None:
    if not raw:
        return None
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return None


def find_credentials(flow: Flow) -> list[Credential]:
    """Every cleartext credential in the client's first bytes of ``flow``."""
    if flow.protocol != "tcp":
        return []
    sent, answered = flow.head_to_server, flow.head_to_client
    where = flow.describe()
    found: list[Credential] = []

    def add(kind: str, user: bytes | str | None, secret: bytes | str) -> None:
        user_text = _text(user) if isinstance(user, bytes) else user
        secret_text = _text(secret) if isinstance(secret, bytes) else secret
        found.append(Credential(kind, user_text, mask(secret_text), where))

    for match in BASIC.finditer(sent):
        decoded = _b64(match.group(1))
        if decoded is not None and b":" in decoded:
            user, _, secret = decoded.partition(b":")
            add("HTTP basic", user, secret)
    if flow.app == "http":
        for match in FORM_FIELD.finditer(sent):
            add("HTTP form", None, match.group(2))
    passwords = PASS_LINE.findall(sent)
    if passwords:
        users = USER_LINE.findall(sent)
        kind = {"pop3": "POP3", "ftp": "FTP"}.get(flow.app or "", "USER/PASS")
        for index, secret in enumerate(passwords):
            add(kind, users[index] if index < len(users) else None, secret)
    for match in IMAP_LOGIN.finditer(sent):
        add("IMAP LOGIN", match.group(1).strip(b'"'), match.group(2).strip(b'"'))
    for match in AUTH_PLAIN.finditer(sent):
        decoded = _b64(match.group(1) or match.group(2))
        if decoded is not None and decoded.count(b"\0") >= 2:
            _, user, secret = decoded.split(b"\0", 2)
            add("AUTH PLAIN", user, secret)
    for match in AUTH_LOGIN.finditer(sent):
        login = _b64(match.group(1) or match.group(2))
        password = _b64(match.group(3) if match.group(1) is None else match.group(2))
        if login is not None and password is not None:
            add("AUTH LOGIN", login, password)
    if flow.app == "telnet" or flow.server_port == 23:
        found.extend(_telnet(flow, sent, answered, where))
    return found


def _telnet(flow: Flow, sent: bytes, answered: bytes, where: str) -> list[Credential]:
    """A Telnet login: the server prompted for a password and the client typed a line.

    Without per-byte times the client's input is split at line ends: the line
    typed before the password line is the user name.
    """
    if not PASSWORD_PROMPT.search(TELNET_COMMAND.sub(b"", answered)):
        return []
    typed = TELNET_COMMAND.sub(b"", sent).replace(b"\r\n", b"\n").replace(b"\r\0", b"\n")
    lines = [line for line in typed.replace(b"\r", b"\n").split(b"\n") if line.strip()]
    if len(lines) < 2:
        return []
    return [Credential("Telnet login", _text(lines[0]), mask(_text(lines[1])), where)]
