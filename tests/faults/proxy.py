"""A TCP proxy for fault tests: pass, delay, blackhole or reset the path to a server.

It listens on a free loopback port and forwards each connection to
``127.0.0.1:upstream``.  Its mode applies to every connection:

``pass``
    Bytes flow both ways.
``delay``
    Each chunk is held ``delay`` seconds before it is forwarded.
``blackhole``
    What a half-open connection looks like from the client: bytes are
    accepted (the kernel acknowledges them) and never answered, and nothing
    is closed, so no RST or FIN ever tells the client; nor the server: a side
    that closes a dead connection (the server after missed heartbeats, the
    client giving up on it) is not heard of on the other side, as across a
    real partition (:attr:`FaultProxy.server_closed` records when the server
    did).  Every connection open
    when the blackhole starts, and every one accepted during it, stays dead
    for good, as when a NAT or firewall drops its state: only connections
    made after :meth:`heal` work again.
``reset``
    Every open connection is closed with an RST (``SO_LINGER`` 0), and new
    ones are reset as soon as they are accepted.

Everything is bounded in time: the proxy stops on its own after ``lifetime``
seconds, its threads are daemons, and :meth:`close` ends it at once.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

PASS, DELAY, BLACKHOLE, RESET = "pass", "delay", "blackhole", "reset"
_POLL = 0.05  # how often pumps look at the mode and the deadline


@dataclass
class _Link:
    """One client connection and its upstream side."""

    client: socket.socket
    upstream: socket.socket | None
    dead: bool = False  # blackholed for good
    closed: threading.Event = field(default_factory=threading.Event)


def _reset(sock: socket.socket | None) -> None:
    """Close with an RST instead of a FIN."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class FaultProxy:
    """Loopback proxy in front of ``127.0.0.1:upstream``; see the module docstring."""

    def __init__(self, upstream: int, lifetime: float = 180.0) -> None:
        self.upstream = upstream
        self.mode = PASS
        self.delay = 0.0
        self.accepted = 0
        self.server_closed: list[float] = []  # monotonic: a server closed a dead connection
        self._deadline = time.monotonic() + lifetime
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._stop = threading.Event()
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(128)
        self._server.settimeout(_POLL)
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept").start()

    # -- control -------------------------------------------------------------
    def url(self, db: int = 0, query: str = "") -> str:
        return f"redis://127.0.0.1:{self.port}/{db}{'?' + query if query else ''}"

    def passthrough(self) -> None:
        self.mode = PASS

    def slow(self, seconds: float) -> None:
        self.delay, self.mode = seconds, DELAY

    def blackhole(self) -> None:
        with self._lock:
            self.mode = BLACKHOLE
            for link in self._links:
                link.dead = True

    def heal(self) -> None:
        """New connections pass again; blackholed ones stay dead (their state is gone)."""
        self.mode = PASS

    def reset(self) -> None:
        with self._lock:
            self.mode = RESET
            links, self._links = self._links, []
        for link in links:
            self._drop(link)

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._server.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            self._drop(link)

    # -- plumbing ------------------------------------------------------------
    def _running(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._deadline

    def _accept_loop(self) -> None:
        while self._running():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            if self.mode == RESET:
                _reset(client)
                continue
            self._open(client)
        self.close()

    def _open(self, client: socket.socket) -> None:
        upstream = None
        if self.mode != BLACKHOLE:
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
            except OSError:
                _reset(client)
                return
        link = _Link(client, upstream, dead=upstream is None)
        with self._lock:
            self._links.append(link)
        for src, dst in ((client, upstream), (upstream, client)):
            if src is not None:
                threading.Thread(target=self._pump, args=(link, src, dst), daemon=True,
                                 name="proxy-pump").start()

    def _pump(self, link: _Link, src: socket.socket, dst: socket.socket | None) -> None:
        while self._running() and not link.closed.is_set():
            try:
                readable, _, _ = select.select([src], [], [], _POLL)
                if not readable:
                    continue
                data = src.recv(65536)
            except (OSError, ValueError):
                break
            if not data:
                break
            if link.dead or dst is None:
                continue  # swallowed: acknowledged by the kernel, never answered
            if self.mode == DELAY:
                time.sleep(self.delay)
            if link.dead:
                continue
            try:
                dst.sendall(data)
            except OSError:
                break
        if link.dead and self._running():
            # Across a partition the other side never hears of it: close this side
            # only; the other stays open and dead until the proxy stops.
            if src is link.upstream:
                self.server_closed.append(time.monotonic())
            with contextlib.suppress(OSError):
                src.close()
            return
        self._drop(link, rst=False)  # an end of stream, or the proxy stopping

    def _drop(self, link: _Link, rst: bool = True) -> None:
        link.closed.set()
        for sock in (link.client, link.upstream):
            if rst:
                _reset(sock)
            elif sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        with self._lock, contextlib.suppress(ValueError):
            self._links.remove(link)
