"""Serving the monitor: read timeouts for headers and bodies, TLS, one uvicorn config.

uvicorn (0.3x-0.5x) restarts its keep-alive timer on every chunk of data and
has no limit on how long a request's headers may take, so a client sending
one header line a second holds a connection (and a file descriptor) for as
long as it likes.  :class:`HeaderTimeoutProtocol` closes a connection whose
request headers are not complete ``header_timeout`` seconds after it opened
(or after its previous response).  :class:`BodyTimeout` answers 408 when a
request body stops arriving for ``body_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_BODY_TIMEOUT = 30.0


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's headers."""

    header_timeout = DEFAULT_HEADER_TIMEOUT
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a request's headers are complete: its app runs
            self._disarm()

    def on_response_complete(self) -> None:
        self._arm()  # the next request on this connection gets its own deadline
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    """A protocol class with this deadline (uvicorn takes a class, not an instance)."""
    return type("MonitorProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})


class BodyTimeout:
    """ASGI middleware: 408 and close when a request body stalls."""

    def __init__(self, app: ASGIApp, timeout: float = DEFAULT_BODY_TIMEOUT) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = {"started": False, "timed_out": False}

        async def guarded_send(message: Message) -> None:
            if state["timed_out"]:
                return  # our 408 went out; the app's late answer has nowhere to go
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        async def guarded_receive() -> Message:
            try:
                return await asyncio.wait_for(receive(), self.timeout)
            except asyncio.TimeoutError:
                if not state["started"]:
                    await _timed_out(send)
                state["timed_out"] = True
                return {"type": "http.disconnect"}

        await self.app(scope, guarded_receive, guarded_send)


async def _timed_out(send: Send) -> None:
    body = b"request body read timed out\n"
    await send({"type": "http.response.start", "status": 408,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class ServeOptions:
    """How ``conveyor monitor`` listens."""

    host: str = "127.0.0.1"
    port: int = 5555
    certfile: str | None = None
    keyfile: str | None = None
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    log_level: str = "info"

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("TLS needs both --certfile and --keyfile")
        if not 0 < self.header_timeout <= 600:
            raise ValueError(f"--header-timeout must be in (0, 600] seconds, "
                             f"got {self.header_timeout}")

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """Arguments for ``uvicorn.run``/``uvicorn.Config``.

        ``proxy_headers=False``: uvicorn would otherwise let 127.0.0.1 rewrite
        the client address from ``X-Forwarded-For``, and both login
        throttling and proxy trust need the real peer (see ``auth.ProxyTrust``).
        """
        return {"host": self.host, "port": self.port, "log_level": self.log_level,
                "access_log": False, "http": protocol_with(self.header_timeout),
                "proxy_headers": False, "timeout_keep_alive": 5,
                "ssl_certfile": self.certfile, "ssl_keyfile": self.keyfile}
