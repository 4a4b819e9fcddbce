"""Huey: RedisHuey, ``huey_consumer -k process -w 2``, results notified by BLPOP (or off)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System


class HueyClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import huey_app

        self.tasks = huey_app
        self.huey = huey_app.huey

    def enqueue_one(self, n: int) -> None:
        send = self.tasks.noop
        for _ in range(n):
            send()

    def enqueue_bulk(self, n: int) -> None:
        from huey import group

        self.huey.enqueue(group([self.tasks.noop.s() for _ in range(n)]))

    def enqueue_group(self, n: int) -> None:
        self.enqueue_bulk(n)

    def preload(self, n: int) -> None:
        from huey import group

        self.huey.enqueue(group([self.tasks.incr.s() for _ in range(n)]))

    def round_trip(self, value: int) -> Any:
        return self.tasks.echo(value).get(blocking=True, timeout=30)

    def chord(self, n: int) -> Any:
        from huey import group

        header = group([self.tasks.echo.s(i) for i in range(n)])
        result = self.huey.enqueue(header.then(self.tasks.collect))
        return result.get(blocking=True, timeout=600)


class HueySystem(System):
    name = "huey"
    label = "Huey"
    env = "huey"
    requirements = ["huey==3.5.4", "redis==8.1.0"]
    packages = ["huey", "redis", "hiredis"]
    db = 6
    bulk_path = "enqueue(group(...)): one enqueue per task"
    chord_path = "group(...).then(callback)"
    group_path = "enqueue(group(...))"
    worker_flags = "huey_consumer benchmarks.apps.huey_app.huey -k process -w 2 -q"

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "huey_consumer"), "benchmarks.apps.huey_app.huey",
                 "-k", "process", "-w", str(procs), "-q"]]

    @staticmethod
    def client() -> Client:
        return HueyClient()


class HueyNoResultClient(HueyClient):
    def round_trip(self, value: int) -> Any:
        from benchmarks.apps import _counter

        self.tasks.signal(value)
        return _counter.wait_signal(timeout=30)


class HueyNoResult(HueySystem):
    """``RedisHuey(results=False)``: the peer of ``conveyor-redis-noresult``."""

    name = "huey-noresult"
    label = "Huey (results off)"
    db = 13
    steps = System.RESULTS_OFF_STEPS
    results_off_of = "huey"
    worker_flags = HueySystem.worker_flags + "  (RedisHuey(results=False))"

    @staticmethod
    def client() -> Client:
        return HueyNoResultClient()
