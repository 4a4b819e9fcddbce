"""The floor (:mod:`benchmarks.apps.floor`): bare redis-py, the least a task costs here.

It is not a peer: the report gives it a table of its own and never counts it
as the fastest peer.  It runs in Conveyor's venv (the same redis-py and
hiredis), one plain process per worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System
from benchmarks.systems.conveyor import ConveyorRedis


class FloorClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import floor

        self.floor = floor
        self.client = floor.connect()

    def enqueue_one(self, n: int) -> None:
        push, queue, message = self.client.rpush, self.floor.QUEUE, self.floor.encode("noop")
        for _ in range(n):
            push(queue, message)

    def preload(self, n: int) -> None:
        message = self.floor.encode("incr")
        for start in range(0, n, 1_000):
            self.client.rpush(self.floor.QUEUE, *[message] * min(1_000, n - start))

    def round_trip(self, value: int) -> Any:
        self.client.rpush(self.floor.QUEUE, self.floor.encode("echo", value))
        got = self.client.blpop([self.floor.REPLY], timeout=30)
        if got is None:
            raise TimeoutError("no reply within 30 s")
        return json.loads(got[1])


class FloorSystem(System):
    name = "floor"
    label = "Floor (bare redis-py)"
    env = ConveyorRedis.env
    requirements = ConveyorRedis.requirements
    packages = ["redis", "hiredis"]
    db = 15
    section = "floor"
    steps = ("enqueue_one", "processing", "latency")
    worker_flags = "python -m benchmarks.apps.floor (one process each): BLPOP, run, RPUSH the reply"

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "benchmarks.apps.floor"] for _ in range(procs)]

    @staticmethod
    def client() -> Client:
        return FloorClient()
