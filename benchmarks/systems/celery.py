"""Celery 5: prefork pool, Redis broker and Redis result backend (its defaults otherwise)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.systems.base import CHUNK_SIZE, Client, System


class CeleryClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import celery_app

        self.tasks = celery_app

    def enqueue_one(self, n: int) -> None:
        send = self.tasks.noop.delay
        for _ in range(n):
            send()

    def enqueue_bulk(self, n: int) -> None:
        from celery import group

        group(self.tasks.noop.s() for _ in range(n)).apply_async()

    def enqueue_group(self, n: int) -> None:
        self.enqueue_bulk(n)

    def enqueue_chunks(self, n: int) -> None:
        self.tasks.noop.chunks([()] * n, CHUNK_SIZE).apply_async()

    def preload(self, n: int) -> None:
        from celery import group

        group(self.tasks.incr.s() for _ in range(n)).apply_async()

    def round_trip(self, value: int) -> Any:
        return self.tasks.echo.delay(value).get(timeout=30)

    def chord(self, n: int) -> Any:
        from celery import chord

        header = [self.tasks.echo.s(i) for i in range(n)]
        return chord(header)(self.tasks.collect.s()).get(timeout=600)


class CelerySystem(System):
    name = "celery"
    label = "Celery"
    env = "celery"
    requirements = ["celery[redis]==5.7.0"]
    packages = ["celery", "kombu", "redis", "hiredis"]
    db = 3
    bulk_path = "group(...).apply_async(): one publish per task"
    chord_path = "chord(header)(callback)"
    group_path = "group(task.s() ...).apply_async()"
    chunks_path = f"task.chunks(calls, {CHUNK_SIZE}).apply_async()"
    worker_flags = ("celery -A benchmarks.apps.celery_app worker -P prefork -c 2 -l WARNING "
                    "--without-gossip --without-mingle --without-heartbeat")

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "celery"), "-A", "benchmarks.apps.celery_app", "worker",
                 "-P", "prefork", "-c", str(procs), "-l", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"]]

    @staticmethod
    def client() -> Client:
        return CeleryClient()
