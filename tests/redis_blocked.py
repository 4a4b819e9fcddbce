"""Wait until a Redis consumer is blocked on the server, instead of sleeping.

Tests of the wake-up path must send only once the consumer sits in its
``BLPOP``; otherwise the message is simply found by the reserve before the
block and the wake-up is never exercised.  ``INFO``'s ``blocked_clients``
counts every test worker on the shared server, so the consumer's own
connections are found by their local port, which ``CLIENT LIST`` shows as
``addr``, and the poll ends when one of them carries the ``b`` (blocked) flag.
"""

from __future__ import annotations

import time
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


def wait_blocked(admin: redis.Redis, *consumers: redis.Redis, timeout: float = 10.0) -> None:
    """Return once each of ``consumers`` has a connection the server lists as blocked."""
    deadline = time.monotonic() + timeout
    while True:
        blocked = _blocked_ports(admin)
        if all(_local_ports(c) & blocked for c in consumers):
            return
        assert time.monotonic() < deadline, "the consumer never blocked on the server"
        time.sleep(0.005)
