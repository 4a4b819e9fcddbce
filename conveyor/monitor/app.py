"""The monitor's ASGI application (Starlette): pages, JSON API, /metrics, static files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from conveyor.exceptions import ConveyorError
from conveyor.monitor import api, pages
from conveyor.monitor.auth import (
    ADMIN,
    READONLY,
    Authenticator,
    BasicAuthMiddleware,
    LoginThrottle,
    ProxyTrust,
    parse_users,
)
from conveyor.monitor.serve import DEFAULT_BODY_TIMEOUT, BodyTimeout

if TYPE_CHECKING:
    from conveyor.app import Conveyor

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds the headers above to every response, 401s included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(conveyor_app: Conveyor, users: Sequence[str],
               readonly_users: Sequence[str] = (), *, proxy: ProxyTrust | None = None,
               throttle: LoginThrottle | None = None,
               body_timeout: float = DEFAULT_BODY_TIMEOUT) -> Starlette:
    """The monitor for ``conveyor_app``; ``users`` are ``user:password`` admins.

    ``proxy`` trusts a single-sign-on proxy's user header from its addresses
    (then basic accounts are optional); ``throttle`` limits failed logins.
    """
    from conveyor.monitor import metrics

    accounts = parse_users(users, ADMIN) + parse_users(readonly_users, READONLY)
    auth = Authenticator(accounts, allow_none=bool(proxy and proxy.networks))
    monitor = api.Monitor(conveyor_app)

    def metrics_endpoint(request: Request) -> Response:
        try:
            body = metrics.render(monitor.app, monitor.store)
        except ConveyorError as exc:  # a scraper sees "down", not a dropped connection
            return PlainTextResponse(f"store unavailable: {exc}\n", status_code=503)
        return Response(body, media_type=metrics.CONTENT_TYPE)

    routes = [
        *api.routes(monitor),
        Route("/metrics", metrics_endpoint),
        Mount("/static", StaticFiles(directory=pages.STATIC), name="static"),
        *pages.routes(),
    ]
    middleware = [Middleware(BodyTimeout, timeout=body_timeout), Middleware(SecurityHeaders),
                  Middleware(BasicAuthMiddleware, auth=auth, throttle=throttle, proxy=proxy)]
    return Starlette(routes=routes, middleware=middleware)
