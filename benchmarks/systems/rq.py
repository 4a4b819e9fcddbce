"""RQ: N ``rq worker`` processes, each forking a work horse per job (RQ's default)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client, System

QUEUE = "bench"


class RQClient(Client):
    def __init__(self) -> None:
        from redis import Redis
        from rq import Queue

        from benchmarks.apps import rq_app

        self.tasks = rq_app
        self.queue = Queue(QUEUE, connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))

    def enqueue_one(self, n: int) -> None:
        send, fn = self.queue.enqueue, self.tasks.noop
        for _ in range(n):
            send(fn)

    def _many(self, fn: Any, n: int, args: Any = None) -> list[Any]:
        from rq import Queue

        jobs: list[Any] = []
        for start in range(0, n, 5_000):  # bounded pipelines
            batch = [Queue.prepare_data(fn, args(i) if args else None)
                     for i in range(start, min(n, start + 5_000))]
            jobs.extend(self.queue.enqueue_many(batch))
        return jobs

    def enqueue_bulk(self, n: int) -> None:
        self._many(self.tasks.noop, n)

    def preload(self, n: int) -> None:
        self._many(self.tasks.incr, n)

    def round_trip(self, value: int) -> Any:
        job = self.queue.enqueue(self.tasks.echo, value)
        result = job.latest_result(timeout=30)
        return None if result is None else result.return_value

    def chord(self, n: int) -> Any:
        header = self._many(self.tasks.echo, n, args=lambda i: (i,))
        callback = self.queue.enqueue(self.tasks.collect, depends_on=header)
        result = callback.latest_result(timeout=600)
        if result is None:
            raise TimeoutError("RQ callback did not finish in time")
        return result.return_value


class RQSystem(System):
    name = "rq"
    label = "RQ"
    env = "rq"
    requirements = ["rq==3.0.0"]
    packages = ["rq", "redis", "hiredis"]
    db = 5
    bulk_path = "Queue.enqueue_many(): one pipeline"
    chord_path = "enqueue(callback, depends_on=[jobs])"
    worker_flags = "rq worker --url URL --quiet bench  (x2 processes; a forked work horse per job)"
    samples_cap = 200  # each round trip forks a work horse (~25 ms)
    processing_cap = 1_000  # ~25-40 ms per job (a fork each): 20,000 would take 10+ min a run

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        url = self.environment()["BENCH_REDIS_URL"]
        return [[str(python.parent / "rq"), "worker", "--url", url, "--quiet", QUEUE]
                for _ in range(procs)]

    @staticmethod
    def client() -> Client:
        return RQClient()
