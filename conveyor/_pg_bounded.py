"""psycopg connections whose every wait for the server has an end.

A connection that silently stopped answering (a NAT or firewall dropped its
state, a partitioned host: no RST, no FIN) leaves libpq waiting in a read
until the kernel gives up on the socket (retransmissions take about 15
minutes, keepalives hours by default, and a path that still acknowledges
bytes, like a stalled proxy, never), and ``statement_timeout`` is the
server's, which never hears of the statement.  So the client bounds the
wait itself: :class:`BoundedConnection` runs every operation's generator
through :func:`_within`, which gives up once ``answer_within`` seconds pass
with nothing to read or write.  It then closes the connection (its state,
and whether the server has the statement, are unknown) and raises
:class:`NoAnswer`, a ``psycopg.OperationalError`` like any lost connection.

How it hooks in: psycopg drives each operation as a generator and, while the
socket is not ready, resumes it with "nothing ready" every 0.1 s (psycopg
3.2 and 3.3, the C and Python waits alike), which is when the deadline is
looked at.  ``notifies()`` waits on purpose; a caller that waits for
notifications sets ``answer_within`` to None meanwhile.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any

import psycopg


class NoAnswer(psycopg.OperationalError):
    """The server said nothing for ``answer_within`` seconds; the connection is closed."""


class _Silent(Exception):
    """Raised inside the generator: the deadline passed with nothing ready."""


def _within(gen: Generator[Any, Any, Any], seconds: float) -> Generator[Any, Any, Any]:
    """``gen``, failing with :class:`_Silent` once ``seconds`` pass with nothing ready."""
    deadline = time.monotonic() + seconds
    try:
        state = next(gen)
        while True:
            ready = yield state
            if ready:
                deadline = time.monotonic() + seconds  # the server is talking
            elif time.monotonic() >= deadline:
                gen.close()
                raise _Silent
            state = gen.send(ready)
    except StopIteration as stop:
        return stop.value


class BoundedConnection(psycopg.Connection[Any]):
    """A connection whose waits for the server end after ``answer_within`` seconds."""

    answer_within: float | None = None

    def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
        limit = self.answer_within
        if limit is None or kwargs.get("timeout") is not None:
            return super().wait(gen, *args, **kwargs)
        try:
            return super().wait(_within(gen, limit), *args, **kwargs)
        except _Silent:
            self.pgconn.finish()  # never reused: a late answer would be misread
            raise NoAnswer(f"no answer from the server within {limit:g}s "
                           "(socket_timeout)") from None
