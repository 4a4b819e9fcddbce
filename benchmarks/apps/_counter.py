"""The INCR the processing run counts, and the signal a results-off round trip waits for.

One connection per worker process, made on first use in each process and
kept (a fork makes the child open its own, once).  The harness polls the
counter key to see the queue drained.

A system that stores no results has nothing to wait on, so its round trip
is measured with a signal instead: the task pushes its argument to a list
and the client pops it with ``BLPOP``.  Conveyor and Huey use the same
signal, so their results-off round trips compare like with like.
"""

from __future__ import annotations

import os
from typing import Any

KEY = "bench:counter"
SIGNAL_KEY = "bench:signal"
_sync: tuple[int, Any] | None = None
_async: tuple[int, Any] | None = None


def url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def _connection() -> Any:
    global _sync
    pid = os.getpid()
    if _sync is None or _sync[0] != pid:
        import redis

        _sync = (pid, redis.Redis.from_url(url()))
    return _sync[1]


def incr() -> int:
    return int(_connection().incr(KEY))


async def aincr() -> int:
    global _async
    pid = os.getpid()
    if _async is None or _async[0] != pid:
        import redis.asyncio

        _async = (pid, redis.asyncio.Redis.from_url(url()))
    return int(await _async[1].incr(KEY))


def signal(value: int) -> None:
    """The task's side of a results-off round trip."""
    _connection().rpush(SIGNAL_KEY, value)


def wait_signal(timeout: float) -> int:
    """The client's side: the next signalled value, or ``TimeoutError``."""
    got = _connection().blpop([SIGNAL_KEY], timeout=timeout)
    if got is None:
        raise TimeoutError(f"no signal within {timeout} s")
    return int(got[1])
