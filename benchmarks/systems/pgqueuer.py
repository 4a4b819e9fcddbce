"""PgQueuer (PostgreSQL): 2 worker processes, its defaults otherwise.

PgQueuer keeps no return values: a finished job leaves a ``successful`` row in
its log table, and its ``CompletionWatcher`` (LISTEN/NOTIFY plus a poll)
resolves a future when that row appears.  The client waits on it with a 1 ms
debounce instead of the default 50 ms (as the arq and taskiq clients poll
their results every 1 ms) and returns the value it sent as the payload.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client
from benchmarks.systems.pg_peer import PostgresPeer

SCHEMA = "bench_pgqueuer"


class PgQueuerClient(Client):
    asynchronous = True

    async def open(self) -> None:
        from datetime import timedelta

        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries
        from pgqueuer.core.completion import CompletionWatcher

        self.conn = await asyncpg.connect(os.environ["PGDSN"])
        driver = AsyncpgDriver(self.conn)
        self.queries = Queries(driver)
        self.watcher = CompletionWatcher(driver, queries=self.queries,
                                         debounce=timedelta(milliseconds=1))
        await self.watcher.__aenter__()

    async def enqueue_one(self, n: int) -> None:
        send = self.queries.enqueue
        for _ in range(n):
            await send("bench.noop", None)

    async def _batches(self, name: str, n: int) -> None:
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            await self.queries.enqueue([name] * k, [None] * k, [0] * k)

    async def enqueue_bulk(self, n: int) -> None:
        await self._batches("bench.noop", n)

    async def preload(self, n: int) -> None:
        await self._batches("bench.incr", n)

    async def round_trip(self, value: int) -> Any:
        import asyncio

        (job_id,) = await self.queries.enqueue("bench.echo", str(value).encode())
        status = await asyncio.wait_for(self.watcher.wait_for(job_id), timeout=30)
        if status != "successful":
            raise RuntimeError(f"job ended {status}")
        return value

    async def close(self) -> None:
        await self.watcher.__aexit__(None, None, None)
        await self.conn.close()


class PgQueuerSystem(PostgresPeer):
    schema = SCHEMA

    name = "pgqueuer"
    label = "PgQueuer"
    env = "pgqueuer"
    section = "postgresql"
    requirements = ["pgqueuer==1.6.0", "asyncpg==0.32.0", "redis==8.1.0"]
    packages = ["pgqueuer", "asyncpg", "redis"]
    db = 14  # only the INCR counter lives in Redis
    bulk_path = "Queries.enqueue(lists): one INSERT per 1,000"
    worker_flags = ("python -m benchmarks.apps.pgqueuer_app  (pgqueuer.run(main), as "
                    "`pgq run` does; asyncpg driver, batch size 10, no concurrency limit; "
                    "x2 processes)")

    def environment(self) -> dict[str, str]:
        from benchmarks.systems import pg

        return {**super().environment(), "PGDSN": pg.url(), "PGQUEUER_SCHEMA": SCHEMA}

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "benchmarks.apps.pgqueuer_app"] for _ in range(procs)]

    def install_command(self, bin_dir: Path) -> list[str]:
        return [str(bin_dir / "pgq"), "install"]

    @staticmethod
    def client() -> Client:
        return PgQueuerClient()
