"""The INCR the processing run counts: one connection per worker process.

The connection is made on first use in each process and kept (a fork makes
the child open its own, once).  The harness polls the same key to see the
queue drained.
"""

from __future__ import annotations

import os
from typing import Any

KEY = "bench:counter"
_sync: tuple[int, Any] | None = None
_async: tuple[int, Any] | None = None


def url() -> str:
    return os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def incr() -> int:
    global _sync
    pid = os.getpid()
    if _sync is None or _sync[0] != pid:
        import redis

        _sync = (pid, redis.Redis.from_url(url()))
    return int(_sync[1].incr(KEY))


async def aincr() -> int:
    global _async
    pid = os.getpid()
    if _async is None or _async[0] != pid:
        import redis.asyncio

        _async = (pid, redis.asyncio.Redis.from_url(url()))
    return int(await _async[1].incr(KEY))
