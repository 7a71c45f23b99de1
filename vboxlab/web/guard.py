"""Who may use the dashboard: a token, the right Host, the right Origin and a CSRF token.

An ASGI middleware in front of every route (pages, API, static files, the event
stream):

- the token comes once in the URL ``vboxlab dashboard`` prints (as Jupyter
  does); that visit is answered with a redirect to the same page without it and
  an ``HttpOnly; SameSite=Strict`` cookie, so the token leaves the address bar
  and history; every other request must carry the cookie (or ``Authorization:
  Bearer TOKEN`` for scripts);
- the ``Host`` header must name the address the server is bound to (a DNS
  rebinding page names its own host);
- a request that changes anything must be a POST with an ``Origin`` of the
  dashboard itself and the CSRF token of the page (``X-CSRF-Token``);
- every answer carries a Content-Security-Policy that allows only the
  dashboard's own scripts (no inline script, no remote origin), and headers
  that keep it out of frames, caches and referrers.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "vboxlab_token"
CSRF_HEADER = "x-csrf-token"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
SAFE_METHODS = {"GET", "HEAD"}


def content_security_policy(style_hashes: Iterable[str] = ()) -> str:
    """The policy: our own files only; inline styles only by hash (those a vendored script
    injects); never inline script, never another origin."""
    extra = " ".join(style_hashes)
    return CSP.replace("style-src 'self'", f"style-src 'self' {extra}".rstrip())


def new_token() -> str:
    """A random token for one dashboard server (256 bits)."""
    return secrets.token_urlsafe(32)


def csrf_token(token: str) -> str:
    """The CSRF token pages carry: derived from the secret, useless without the cookie."""
    return hmac.new(token.encode(), b"vboxlab-csrf", hashlib.sha256).hexdigest()


def allowed_hosts(host: str, port: int) -> set[str]:
    """The Host headers that name this server (loopback names for a loopback bind)."""
    names = {host}
    if host in ("127.0.0.1", "localhost", "::1"):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    elif ":" in host and not host.startswith("["):
        names = {f"[{host}]"}
    return {f"{name}:{port}" for name in names}


class Guard:
    """The ASGI middleware that enforces the rules above."""

    def __init__(self, app: ASGIApp, *, token: str, hosts: Iterable[str],
                 style_hashes: Iterable[str] = ()) -> None:
        self.app = app
        self.headers = [(b"content-security-policy",
                         content_security_policy(style_hashes).encode()), *SECURITY_HEADERS]
        self.token = token
        self.csrf = csrf_token(token)
        self.hosts = set(hosts)
        self.origins = {f"http://{host}" for host in self.hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":  # the dashboard pushes over SSE; no sockets served
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        method = scope.get("method", "GET")
        if headers.get("host") not in self.hosts:
            await _deny(send, self.headers, "this dashboard answers only to "
                        f"{', '.join(sorted(self.hosts))} (Host header "
                        f"{headers.get('host')!r}); open the URL vboxlab dashboard printed")
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if "token" in query and method in SAFE_METHODS:
            if not hmac.compare_digest(query["token"], self.token):
                await _deny(send, self.headers,
                            "wrong token; open the URL vboxlab dashboard printed")
                return
            rest = {k: v for k, v in query.items() if k != "token"}
            location = scope.get("path", "/") + (f"?{urlencode(rest)}" if rest else "")
            await _redirect(send, self.headers, location, self.token)
            return
        if not hmac.compare_digest(self._presented(headers), self.token):
            await _deny(send, self.headers, "no valid token: open the URL vboxlab dashboard "
                        "printed (it holds the token and sets a cookie)")
            return
        if method not in SAFE_METHODS:
            if method != "POST":
                await _deny(send, self.headers,
                            f"{method} is not allowed; actions are POST requests", 405)
                return
            if headers.get("origin") not in self.origins:
                await _deny(send, self.headers, f"cross-origin request refused (Origin "
                            f"{headers.get('origin')!r})")
                return
            if not hmac.compare_digest(headers.get(CSRF_HEADER, ""), self.csrf):
                await _deny(send, self.headers, "missing or wrong CSRF token; reload the page")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _presented(self, headers: dict[str, str]) -> str:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return ""
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else ""


async def _deny(send: Send, headers: list[tuple[bytes, bytes]], reason: str,
                status: int = 403) -> None:
    body = f"vboxlab dashboard: {reason}\n".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, headers: list[tuple[bytes, bytes]], location: str,
                    token: str) -> None:
    cookie = f"{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location.encode()), (b"set-cookie", cookie.encode()),
                            (b"content-length", b"0"), *headers]})
    await send({"type": "http.response.body", "body": b""})
