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

Failed logins are throttled per client address (:class:`LoginThrottle`):
after ``limit`` failures within a window every request from that address
gets 429 for a delay that doubles with each further failure, valid
credentials included (otherwise the right guess would still stand out).

Behind a single-sign-on proxy, a user header (``X-Forwarded-User`` by
default) is believed only when the connection comes from a configured proxy
address (:class:`ProxyTrust`); from anyone else it is ignored and basic auth
applies.  The client address used for throttling is then the last hop the
proxy appended to ``X-Forwarded-For``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

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


def read_users_file(path: str) -> list[str]:
    """``user:pass`` entries from a file: one a line (or comma separated), ``#`` comments."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the credentials file {path}: {exc.strerror}") from exc
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Authenticator:
    """Checks an ``Authorization`` header against the accounts."""

    def __init__(self, accounts: Sequence[Account], allow_none: bool = False) -> None:
        if not accounts and not allow_none:
            raise ValueError("the monitor needs at least one user (--basic-auth-env VAR or "
                             "--basic-auth-file PATH)")
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


@dataclass
class LoginThrottle:
    """Failed logins per client address: 429 with a doubling delay past ``limit``."""

    limit: int = 10
    window: float = 60.0
    max_delay: float = 300.0
    max_clients: int = 10_000  # memory bound under a spray from many addresses
    _failures: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def blocked_for(self, client: str) -> float:
        """Seconds ``client`` must still wait (0: it may try)."""
        with self._lock:
            entry = self._failures.get(client)
        return max(0.0, entry[2] - time.monotonic()) if entry else 0.0

    def failed(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            count, last, _ = self._failures.get(client, (0, now, 0.0))
            count = 1 if now - last > self.window else count + 1
            until = now + min(self.max_delay, 2.0 ** (count - self.limit)) \
                if count >= self.limit else 0.0
            self._failures[client] = (count, now, until)
            if len(self._failures) > self.max_clients:
                self._prune(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

    def _prune(self, now: float) -> None:
        stale = [k for k, (_, last, until) in self._failures.items()
                 if now - last > self.window and until <= now]
        for key in stale or list(self._failures)[: len(self._failures) // 2]:
            del self._failures[key]


@dataclass(frozen=True)
class ProxyTrust:
    """Which peers may vouch for a user with ``header`` (empty: nobody)."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    header: bytes = b"x-forwarded-user"
    role: str = READONLY

    @classmethod
    def parse(cls, addresses: Iterable[str], header: str = "X-Forwarded-User",
              role: str = READONLY) -> ProxyTrust:
        try:
            networks = tuple(ipaddress.ip_network(a.strip(), strict=False)
                             for a in addresses if a.strip())
        except ValueError as exc:
            raise ValueError(f"--trusted-proxy: {exc}") from exc
        if role not in (ADMIN, READONLY):
            raise ValueError(f"proxy role must be {ADMIN} or {READONLY}, got {role!r}")
        return cls(networks, header.lower().encode("latin-1"), role)

    def trusts(self, peer: str | None) -> bool:
        if not self.networks or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


def _peer(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class BasicAuthMiddleware:
    """ASGI middleware: 401 without valid credentials, 403 for read-only actions."""

    def __init__(self, app: ASGIApp, auth: Authenticator, throttle: LoginThrottle | None = None,
                 proxy: ProxyTrust | None = None) -> None:
        self.app = app
        self.auth = auth
        self.throttle = throttle or LoginThrottle()
        self.proxy = proxy or ProxyTrust()

    def _client(self, scope: Scope, headers: dict[bytes, bytes]) -> str:
        """The address to throttle: the peer, or what a trusted proxy says the client is."""
        peer = _peer(scope) or "-"
        forwarded = headers.get(b"x-forwarded-for")
        if forwarded and self.proxy.trusts(peer):
            return forwarded.decode("latin-1").rsplit(",", 1)[-1].strip() or peer
        return peer

    def _identify(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple[str, str] | None:
        vouched = headers.get(self.proxy.header)
        if vouched and self.proxy.trusts(_peer(scope)):
            return vouched.decode("utf-8", "replace"), self.proxy.role
        return self.auth.role(headers.get(b"authorization"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        client = self._client(scope, headers)
        wait = self.throttle.blocked_for(client)
        if wait > 0:
            await _respond(send, 429, "too many failed logins; try again later",
                           [(b"retry-after", str(math.ceil(wait)).encode())])
            return
        found = self._identify(scope, headers)
        if found is None:
            if b"authorization" in headers:
                self.throttle.failed(client)
            await _respond(send, 401, "authentication required",
                           [(b"www-authenticate", f'Basic realm="{REALM}"'.encode())])
            return
        if b"authorization" in headers:
            self.throttle.succeeded(client)
        user, role = found
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            if role != ADMIN:
                await _respond(send, 403, "read-only user: actions are not allowed")
                return
            if ACTION_HEADER not in headers:
                await _respond(send, 403, "missing X-Conveyor-Action header")
                return
        scope.setdefault("state", {})
        scope["state"]["user"] = user
        scope["state"]["role"] = role
        await self.app(scope, receive, send)


async def _respond(send: Send, status: int, error: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """The API's error shape, ``{"error": "..."}``, as every other error answer has."""
    body = json.dumps({"error": error}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
