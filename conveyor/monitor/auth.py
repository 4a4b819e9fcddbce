"""HTTP basic auth for every route: admins, and optional read-only users.

Credentials are compared in constant time: each check hashes the offered
user and password and compares the digests against *every* configured
account with :func:`hmac.compare_digest`, so neither a wrong password nor an
unknown user name answers faster than a near miss.  Read-only users may
look at everything but get 403 on actions (any method but GET/HEAD).

Browsers send basic credentials with every request to the origin, so a
page on another site could post a form here: actions also require the
``X-Conveyor-Action`` header, which a cross-site form cannot set and a
cross-site script cannot send without a CORS preflight this app never
grants.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

ADMIN, READONLY = "admin", "readonly"
ACTION_HEADER = b"x-conveyor-action"
REALM = "Conveyor monitor"
SAFE_METHODS = frozenset({"GET", "HEAD"})


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass(frozen=True)
class Account:
    user: bytes  # sha256 digests; plain text is not kept
    password: bytes
    role: str


def parse_users(items: Iterable[str], role: str = ADMIN) -> list[Account]:
    """``user:pass`` items (each may hold several, comma separated)."""
    accounts = []
    for item in items:
        for pair in item.split(","):
            pair = pair.strip()
            if not pair:
                continue
            user, sep, password = pair.partition(":")
            if not sep or not user or not password:
                raise ValueError(f"basic auth entries look like user:password, got {pair!r}")
            accounts.append(Account(_digest(user), _digest(password), role))
    return accounts


class Authenticator:
    """Checks an ``Authorization`` header against the accounts."""

    def __init__(self, accounts: Sequence[Account]) -> None:
        if not accounts:
            raise ValueError("the monitor needs at least one user (--basic-auth user:pass)")
        self.accounts = list(accounts)

    def role(self, header: bytes | None) -> tuple[str, str] | None:
        """``(user, role)`` for valid credentials, else None; same work either way."""
        user, password = _decode(header)
        offered_user, offered_password = _digest(user), _digest(password)
        found: str | None = None
        for account in self.accounts:  # no early exit: every account is compared
            same_user = hmac.compare_digest(offered_user, account.user)
            same_password = hmac.compare_digest(offered_password, account.password)
            if same_user & same_password and found is None:
                found = account.role
        return (user, found) if found is not None else None


def _decode(header: bytes | None) -> tuple[str, str]:
    if not header or header[:6].lower() != b"basic ":
        return "", "\x00"  # still hashed and compared, never matches (passwords are non-empty)
    try:
        text = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", "\x00"
    user, _, password = text.partition(":")
    return user, password


class BasicAuthMiddleware:
    """ASGI middleware: 401 without valid credentials, 403 for read-only actions."""

    def __init__(self, app: ASGIApp, auth: Authenticator) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        found = self.auth.role(headers.get(b"authorization"))
        if found is None:
            await _respond(send, 401, b"authentication required\n",
                           [(b"www-authenticate", f'Basic realm="{REALM}"'.encode())])
            return
        user, role = found
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            if role != ADMIN:
                await _respond(send, 403, b"read-only user: actions are not allowed\n")
                return
            if ACTION_HEADER not in headers:
                await _respond(send, 403, b"missing X-Conveyor-Action header\n")
                return
        scope.setdefault("state", {})
        scope["state"]["user"] = user
        scope["state"]["role"] = role
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, body: bytes,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
