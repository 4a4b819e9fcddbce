"""Procrastinate (PostgreSQL): 2 worker processes, its defaults otherwise.

Procrastinate keeps no return values: a job ends as ``succeeded`` in
``procrastinate_jobs`` (its default ``delete_jobs="never"`` keeps the row).
So its round trip is from ``defer()`` to that status, read every 1 ms (as the
arq and taskiq clients poll their results), returning the argument the job
was given.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks.systems.base import Client
from benchmarks.systems.pg_peer import PostgresPeer

POLL = 0.001
SCHEMA = "bench_procrastinate"


class ProcrastinateClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import procrastinate_app

        self.tasks = procrastinate_app
        self.app = procrastinate_app.app
        self._opened = self.app.open()
        self._opened.__enter__()

    def enqueue_one(self, n: int) -> None:
        defer = self.tasks.noop.defer
        for _ in range(n):
            defer()

    def enqueue_bulk(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.tasks.noop.batch_defer(*({} for _ in range(min(1000, n - start))))

    def preload(self, n: int) -> None:
        for start in range(0, n, 1000):
            self.tasks.incr.batch_defer(*({} for _ in range(min(1000, n - start))))

    def round_trip(self, value: int) -> Any:
        job_id = self.tasks.echo.defer(value=value)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = self.app.job_manager.list_jobs(id=job_id)[0]
            if job.status == "succeeded":
                return job.task_kwargs["value"]
            time.sleep(POLL)
        raise TimeoutError("job not done within 30 s")

    def close(self) -> None:
        self._opened.__exit__(None, None, None)


class ProcrastinateSystem(PostgresPeer):
    schema = SCHEMA

    name = "procrastinate"
    label = "Procrastinate"
    env = "procrastinate"
    section = "postgresql"
    requirements = ["procrastinate==3.10.0", "redis==8.1.0"]
    packages = ["procrastinate", "psycopg", "redis"]
    db = 12  # only the INCR counter lives in Redis
    # ~5.5 ms of worker CPU per job here: 20,000 would outlast the drain timeout.
    processing_cap = 5_000
    bulk_path = "task.batch_defer(*kwargs): one INSERT per 1,000"
    worker_flags = ("procrastinate --app=benchmarks.apps.procrastinate_app.app worker "
                    "--queues=bench  (x2 processes; concurrency 1, its default)")

    def environment(self) -> dict[str, str]:
        from benchmarks.systems import pg

        return {**super().environment(), "BENCH_PG_CONNINFO": pg.conninfo(SCHEMA)}

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "procrastinate"),
                 "--app=benchmarks.apps.procrastinate_app.app", "worker", "--queues=bench"]
                for _ in range(procs)]

    def install_command(self, bin_dir: Path) -> list[str]:
        return [str(bin_dir / "procrastinate"), "--app=benchmarks.apps.procrastinate_app.app",
                "schema", "--apply"]

    @staticmethod
    def client() -> Client:
        return ProcrastinateClient()
