"""An idle consumer of queues on several shards waits on all of them at once.

An unsharded consumer blocks in ``BLPOP`` on its queues' wake lists
(:mod:`conveyor.brokers.redis`, "Waiting without polling").  Shards are
different slots, usually on different masters, and a cluster refuses a
``BLPOP`` over keys of several slots, so :func:`wait_for_any` sends one
``BLPOP`` per shard, each on a connection of its own to that shard's
master, and waits for the first reply with a selector: a message stored on
any shard wakes the consumer within a round trip, as on one server.

The other shards' ``BLPOP`` are still blocked then.  Redis has no cheap way
to end one early, so their connections are closed (the server drops a
closed client's block) and opened again at the next wait: a wait that is
woken costs a reconnect per other shard, a wait that times out costs
nothing more than one ``BLPOP`` per shard per second.  These connections
are kept apart from the shard's pool, so closing one is not taken for a
broken server (:class:`conveyor._redis.DroppingPool` would drop every idle
connection of the pool).  A token taken by a closed ``BLPOP`` is lost,
which costs nothing here: the consumer then reserves from every shard.
"""

from __future__ import annotations

import os
import selectors
import threading
import time
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from conveyor.brokers.redis import RedisBroker

__all__ = ["Waiters", "wait_for_any"]

# How long past its block a BLPOP's reply may take before the wait gives up on it.
GRACE = 0.5


class Waiters:
    """Idle wait connections, per shard; a forked child starts without any."""

    def __init__(self, shards: int) -> None:
        self._shards = shards
        self._idle: list[list[Any]] = [[] for _ in range(shards)]
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def take(self, index: int, broker: RedisBroker) -> Any:
        with self._lock:
            self._after_fork()
            if self._idle[index]:
                return self._idle[index].pop()
        conn = broker.new_connection()
        # Connected here, not by the first send: a cluster connection finds the
        # slot's master in connect() (conveyor._redis_cluster.SlotConnection).
        conn.connect()
        return conn

    def give(self, index: int, conn: Any) -> None:
        with self._lock:
            if os.getpid() == self._pid:
                self._idle[index].append(conn)

    def _after_fork(self) -> None:
        if os.getpid() != self._pid:  # the parent's sockets stay the parent's
            self._idle = [[] for _ in range(self._shards)]
            self._pid = os.getpid()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, [[] for _ in range(self._shards)]
            mine = os.getpid() == self._pid
        for conns in idle if mine else ():
            for conn in conns:
                conn.disconnect()


def wait_for_any(waiters: Waiters, shards: Sequence[tuple[int, RedisBroker, Sequence[str]]],
                 block: float) -> int | None:
    """Block up to ``block`` s on every shard's wake lists at once.

    ``shards`` holds (shard number, its broker, the queues to wait for there).
    Returns the number of the first shard that had a wake token, or whose
    connection failed (the reserve after the wait reports the failure in its
    own words); None when the wait ran out.
    """
    pending: dict[Any, int] = {}
    woken: int | None = None
    try:
        for index, broker, queues in shards:
            conn = None
            try:
                conn = waiters.take(index, broker)
                conn.send_command("BLPOP", *broker.wake_keys(queues), f"{block:.3f}")
            except (RedisError, OSError):
                if conn is not None:
                    conn.disconnect()
                return index
            pending[conn] = index
        woken = _first_reply(waiters, pending, time.monotonic() + block + GRACE)
    finally:
        for conn in pending:  # still blocked: closing the connection ends its BLPOP
            conn.disconnect()
    return woken


def _first_reply(waiters: Waiters, pending: dict[Any, int], deadline: float) -> int | None:
    """Read replies as they come until one is a token (or a failure); take the
    connections that answered out of ``pending``."""
    with selectors.DefaultSelector() as selector:
        for conn in pending:
            selector.register(conn._sock, selectors.EVENT_READ, conn)
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            for key, _ in selector.select(left):
                conn = key.data
                index = pending.pop(conn)
                selector.unregister(key.fileobj)
                try:
                    reply = conn.read_response()
                except (RedisError, OSError):
                    conn.disconnect()
                    return index
                waiters.give(index, conn)
                if reply is not None:
                    return index
    return None
