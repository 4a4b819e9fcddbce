"""taskiq: RedisStreamBroker and RedisAsyncResultBackend; ``taskiq worker --workers 2``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System

POLL = 0.001  # seconds between result checks (taskiq's default check_interval is 0.2 s)


class TaskiqClient(Client):
    asynchronous = True

    async def open(self) -> None:
        from benchmarks.apps import taskiq_app

        self.tasks = taskiq_app
        await taskiq_app.broker.startup()

    async def enqueue_one(self, n: int) -> None:
        send = self.tasks.noop.kiq
        for _ in range(n):
            await send()

    async def preload(self, n: int) -> None:
        for _ in range(n):
            await self.tasks.incr.kiq()

    async def round_trip(self, value: int) -> Any:
        task = await self.tasks.echo.kiq(value)
        result = await task.wait_result(check_interval=POLL, timeout=30)
        return result.return_value

    async def close(self) -> None:
        await self.tasks.broker.shutdown()


class TaskiqSystem(System):
    name = "taskiq"
    label = "taskiq"
    env = "taskiq"
    requirements = ["taskiq==0.13.0", "taskiq-redis==1.2.4"]
    packages = ["taskiq", "taskiq-redis", "redis", "hiredis"]
    db = 8
    worker_flags = ("taskiq worker benchmarks.apps.taskiq_app:broker --workers 2 "
                    "--log-level WARNING  (max-async-tasks 100, ack when saved: defaults)")

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "taskiq"), "worker", "benchmarks.apps.taskiq_app:broker",
                 "--workers", str(procs), "--log-level", "WARNING"]]

    @staticmethod
    def client() -> Client:
        return TaskiqClient()
