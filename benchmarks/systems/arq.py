"""arq: asyncio; N worker processes (``max_jobs=10`` each, arq's default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System

POLL = 0.001  # seconds between result polls (arq's default poll_delay is 0.5 s)


class ArqClient(Client):
    asynchronous = True

    async def open(self) -> None:
        from arq import create_pool
        from arq.connections import RedisSettings

        self.redis = await create_pool(RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"]))

    async def enqueue_one(self, n: int) -> None:
        send = self.redis.enqueue_job
        for _ in range(n):
            await send("noop")

    async def preload(self, n: int) -> None:
        for _ in range(n):
            await self.redis.enqueue_job("incr")

    async def round_trip(self, value: int) -> Any:
        job = await self.redis.enqueue_job("echo", value)
        return await job.result(timeout=30, poll_delay=POLL)

    async def close(self) -> None:
        await self.redis.aclose()


class ArqSystem(System):
    name = "arq"
    label = "arq"
    env = "arq"
    requirements = ["arq==0.28.0"]
    packages = ["arq", "redis", "hiredis"]
    db = 7
    samples_cap = 100  # an idle arq worker polls its queue every 0.5 s (poll_delay default)
    worker_flags = ("python -m benchmarks.apps.arq_app  (arq.run_worker, max_jobs=10, "
                    "log level WARNING; x2 processes)")

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "benchmarks.apps.arq_app"] for _ in range(procs)]

    @staticmethod
    def client() -> Client:
        return ArqClient()
