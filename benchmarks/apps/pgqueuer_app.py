"""PgQueuer: the benchmark entrypoints; ``python -m benchmarks.apps.pgqueuer_app``
starts one worker process through ``pgqueuer.run`` (what ``pgq run`` calls, with
its defaults: batch size 10, no concurrency limit).  ``pgq run`` itself fails in
1.6.0 before it starts (its ``--log-level`` parser hands a str where an enum is
read, default included).  The asyncpg driver, PgQueuer's first choice: its
psycopg driver shares one connection between queries and a ``notifies()`` wait
of up to a second, which made every job wait 1-2 s here.  Async entrypoints
(PgQueuer's own form), the INCR on an asyncio Redis connection per process,
like arq's."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import AsyncpgDriver, Job, PgQueuer, run

from benchmarks.apps import _counter


@asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    conn = await asyncpg.connect(os.environ["PGDSN"])  # tables: PGQUEUER_SCHEMA
    pgq = PgQueuer(AsyncpgDriver(conn))

    @pgq.entrypoint("bench.noop")
    async def noop(job: Job) -> None:
        return None

    @pgq.entrypoint("bench.incr")
    async def incr(job: Job) -> None:
        await _counter.aincr()

    @pgq.entrypoint("bench.echo")
    async def echo(job: Job) -> None:
        return None  # PgQueuer keeps no return value; the client waits for the status

    try:
        yield pgq
    finally:
        await conn.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(main))
