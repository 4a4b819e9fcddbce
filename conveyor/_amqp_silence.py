"""Noticing a RabbitMQ connection that went silent, within one heartbeat.

A connection whose path died without a RST or FIN (a NAT or firewall dropped
its state, a partitioned host) leaves every blocking pika call (a publisher
confirm, ``basic.get``, a declaration) waiting for an answer that never
comes.  RabbitMQ sends a heartbeat frame every half heartbeat timeout ``T``
when it has nothing else to send, so a live connection never stays silent
for ``T``; pika's own checker only closes a connection after ``T + 5`` to
``2 (T + 5)`` seconds of silence, which is later than RabbitMQ gives up on
the client and hands its unacknowledged messages to another consumer
(between ``2 T`` and ``3 T`` after the last frame it received).

:func:`watch` therefore checks a connection's received-byte count every
``T / 8`` and terminates the connection once nothing has arrived for ``T``,
as pika's checker does: the blocked call raises pika's
``AMQPHeartbeatTimeout`` (a connection error the links reconnect after),
and the consuming link forgets its leases before RabbitMQ can have handed
them to anyone else.  The checks run on pika's I/O loop, which every
blocking call and ``process_data_events`` turns; bytes that arrived while
nobody turned it are read before an overdue check runs, so an idle
connection is not mistaken for a dead one.  With heartbeats off
(``heartbeat=0``) there is nothing to listen for and nothing is watched.
"""

from __future__ import annotations

import time
from typing import Any

import pika.exceptions
from pika.adapters.blocking_connection import BlockingConnection

CHECKS_PER_HEARTBEAT = 8


class _Silence:
    """Terminates ``impl`` (pika's connection under the blocking wrapper) once it
    has received nothing for ``limit`` seconds."""

    def __init__(self, impl: Any, limit: float) -> None:
        self._impl = impl
        self._limit = limit
        self._seen = impl.bytes_received
        self._heard = time.monotonic()
        self._schedule()

    def _schedule(self) -> None:
        self._impl._adapter_call_later(self._limit / CHECKS_PER_HEARTBEAT, self._check)

    def _check(self) -> None:
        impl = self._impl
        if impl.is_closed:
            return
        now = time.monotonic()
        if impl.bytes_received != self._seen:
            self._seen, self._heard = impl.bytes_received, now
        elif now - self._heard >= self._limit:
            impl._terminate_stream(pika.exceptions.AMQPHeartbeatTimeout(
                f"nothing heard from RabbitMQ for {now - self._heard:.1f}s, a heartbeat "
                "timeout: a dead path or a stalled node"))
            return
        self._schedule()


def watch(conn: BlockingConnection) -> None:
    """Watch ``conn`` for silence, if heartbeats were negotiated (see the module
    docstring)."""
    heartbeat = conn._impl.params.heartbeat
    if isinstance(heartbeat, int | float) and heartbeat > 0:
        _Silence(conn._impl, float(heartbeat))
