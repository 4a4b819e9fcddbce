"""Wait until a Redis consumer is blocked on the server, instead of sleeping.

Tests of the wake-up path must send only once the consumer sits in its
``BLPOP``; otherwise the message is simply found by the reserve before the
block and the wake-up is never exercised.  ``INFO``'s ``blocked_clients``
counts every test worker on the shared server, so the consumer's own
connections are found by their local port, which ``CLIENT LIST`` shows as
``addr``, and the poll ends when one of them carries the ``b`` (blocked) flag.

A sharded broker's idle consumer blocks on connections outside any pool, one
per shard, each to that shard's master (:mod:`conveyor._shard_wait`); for
those, :func:`connection_blocked` asks the server at the other end of the
connection's own socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis


def _local_ports(client: redis.Redis) -> set[int]:
    pool: Any = client.connection_pool
    ports = set()
    for conn in list(pool._in_use_connections):
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            ports.add(sock.getsockname()[1])
    return ports


def _blocked_ports(admin: redis.Redis) -> set[int]:
    return {int(c["addr"].rsplit(":", 1)[1]) for c in admin.client_list()
            if "b" in c["flags"]}


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` every 5 ms; fail, naming ``what``, if it is not met in time."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.005)


def wait_blocked(admin: redis.Redis, *consumers: redis.Redis, timeout: float = 10.0) -> None:
    """Return once each of ``consumers`` has a connection the server lists as blocked."""
    def all_blocked() -> bool:
        blocked = _blocked_ports(admin)
        return all(_local_ports(c) & blocked for c in consumers)

    wait_until(all_blocked, "the consumer blocked on the server", timeout)


def connection_blocked(conn: Any) -> bool:
    """Whether the server ``conn`` is connected to lists it as blocked.

    False while it is not connected, or if its socket is closed under us (the
    consumer's thread closes the wait connections it no longer needs).
    """
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return False
    try:
        host, port = sock.getpeername()[:2]
        local = sock.getsockname()[1]
    except OSError:
        return False
    admin = redis.Redis(host=host, port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return local in _blocked_ports(admin)
    finally:
        admin.close()
