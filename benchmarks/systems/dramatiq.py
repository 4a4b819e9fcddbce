"""Dramatiq: Redis broker, processes x 1 thread, Results and GroupCallbacks middleware."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System


class DramatiqClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import dramatiq_app

        self.tasks = dramatiq_app

    def enqueue_one(self, n: int) -> None:
        send = self.tasks.noop.send
        for _ in range(n):
            send()

    def enqueue_bulk(self, n: int) -> None:
        from dramatiq import group

        group([self.tasks.noop.message() for _ in range(n)]).run()

    def enqueue_group(self, n: int) -> None:
        self.enqueue_bulk(n)

    def preload(self, n: int) -> None:
        from dramatiq import group

        group([self.tasks.incr.message() for _ in range(n)]).run()

    def round_trip(self, value: int) -> Any:
        return self.tasks.echo.send(value).get_result(block=True, timeout=30_000)

    def chord(self, n: int) -> Any:
        from dramatiq import group

        header = group([self.tasks.echo.message(i) for i in range(n)])
        callback = self.tasks.collect.message()
        header.add_completion_callback(callback)
        header.run()
        return callback.get_result(block=True, timeout=600_000)


class DramatiqSystem(System):
    name = "dramatiq"
    label = "Dramatiq"
    env = "dramatiq"
    requirements = ["dramatiq[redis]==2.2.1"]
    packages = ["dramatiq", "redis", "hiredis"]
    db = 4
    bulk_path = "group(...).run(): one enqueue per task"
    chord_path = "group + add_completion_callback"
    group_path = "group(...).run()"
    worker_flags = "dramatiq benchmarks.apps.dramatiq_app --processes 2 --threads 1"

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "dramatiq"), "benchmarks.apps.dramatiq_app",
                 "--processes", str(procs), "--threads", "1"]]

    @staticmethod
    def client() -> Client:
        return DramatiqClient()
