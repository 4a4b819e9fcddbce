"""arq: async tasks; one worker process per ``python -m benchmarks.apps.arq_app``.

arq's CLI logs every job at INFO; this starts the worker through arq's
public ``run_worker`` with logging at WARNING, like every other system here.
The INCR uses arq's own Redis pool (``ctx["redis"]``), which each worker
process opens once.
"""

from __future__ import annotations

import logging
from typing import Any

from arq import run_worker
from arq.connections import RedisSettings

from benchmarks.apps import _counter


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def incr(ctx: dict[str, Any]) -> int:
    return int(await ctx["redis"].incr(_counter.KEY))


async def echo(ctx: dict[str, Any], value: Any) -> Any:
    return value


class WorkerSettings:
    functions = [noop, incr, echo]
    redis_settings = RedisSettings.from_dsn(_counter.url())
    max_jobs = 10  # arq's default: jobs in flight per process (asyncio, one core)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    run_worker(WorkerSettings)
