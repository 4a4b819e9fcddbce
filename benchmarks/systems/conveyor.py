"""Conveyor, on its Redis broker (results in Redis, or off) and on SQLite (one file, WAL)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from benchmarks.systems.base import CHUNK_SIZE, ROOT, Client, System

SQLITE_PATH = ROOT / "benchmarks" / "results" / "raw" / "conveyor-bench.db"


class ConveyorClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import conveyor_app

        self.tasks = conveyor_app
        self.app = conveyor_app.app

    def enqueue_one(self, n: int) -> None:
        send = self.tasks.noop.delay
        for _ in range(n):
            send()

    def _bulk(self, name: str, n: int) -> None:
        self.app.send_many(name, [()] * n)

    def enqueue_bulk(self, n: int) -> None:
        self._bulk("bench.noop", n)

    def enqueue_group(self, n: int) -> None:
        from conveyor import group

        group(self.tasks.noop.s() for _ in range(n)).apply_async()

    def enqueue_chunks(self, n: int) -> None:
        self.tasks.noop.chunks([()] * n, CHUNK_SIZE).apply_async()

    def preload(self, n: int) -> None:
        for start in range(0, n, 10_000):
            self._bulk("bench.incr", min(10_000, n - start))

    def round_trip(self, value: int) -> Any:
        return self.tasks.echo.delay(value).get(timeout=30)

    def chord(self, n: int) -> Any:
        from conveyor import chord

        header = [self.tasks.echo.s(i) for i in range(n)]
        return chord(header)(self.tasks.collect.s()).get(timeout=600)


class ConveyorRedis(System):
    name = "conveyor-redis"
    label = "Conveyor (Redis)"
    env = "conveyor"
    # typing_extensions: conveyor/canvas.py imports it but pyproject does not
    # declare it yet (reported); harmless once it does.
    requirements = [f"-e {ROOT}[redis]", "redis==8.1.0", "typing_extensions==4.16.0"]
    packages = ["conveyor", "redis", "hiredis"]
    db = 1
    bulk_path = "app.send_many(name, calls): one Lua call per 1,000, two in flight"
    chord_path = "chord(header)(callback)"
    group_path = "group(task.s() ...).apply_async()"
    chunks_path = f"task.chunks(calls, {CHUNK_SIZE}).apply_async()"
    worker_flags = "conveyor -A benchmarks.apps.conveyor_app worker -P prefork -c 2 -l WARNING"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["BENCH_CONVEYOR_BROKER"] = env["BENCH_REDIS_URL"]
        return env

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "conveyor", "-A", "benchmarks.apps.conveyor_app", "worker",
                 "-P", "prefork", "-c", str(procs), "-l", "WARNING"]]

    @staticmethod
    def client() -> Client:
        return ConveyorClient()


class ConveyorNoResultClient(ConveyorClient):
    def round_trip(self, value: int) -> Any:
        from benchmarks.apps import _counter

        self.tasks.signal.delay(value)
        return _counter.wait_signal(timeout=30)


class ConveyorRedisNoResult(ConveyorRedis):
    """``task_ignore_result=True``: processing and a signalled round trip (issue 22, 3 and 4)."""

    name = "conveyor-redis-noresult"
    label = "Conveyor (Redis, results off)"
    db = 9
    steps = System.RESULTS_OFF_STEPS
    results_off_of = "conveyor-redis"
    worker_flags = ConveyorRedis.worker_flags + "  (task_ignore_result=True)"

    @staticmethod
    def client() -> Client:
        return ConveyorNoResultClient()


class ConveyorSQLite(ConveyorRedis):
    name = "conveyor-sqlite"
    label = "Conveyor (SQLite)"
    db = 2  # only the INCR counter lives in Redis
    bulk_path = "app.send_many(name, calls): one transaction"
    worker_flags = ConveyorRedis.worker_flags + "  (broker and results: sqlite:///file.db)"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["BENCH_CONVEYOR_BROKER"] = f"sqlite:///{SQLITE_PATH}"
        return env

    def reset(self) -> None:
        SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{SQLITE_PATH}{suffix}")
            if path.exists():
                os.unlink(path)


class ConveyorPostgres(ConveyorRedis):
    """Broker and results in PostgreSQL (schema ``bench_conveyor``); the counter in Redis."""

    name = "conveyor-postgres"
    label = "Conveyor (PostgreSQL)"
    env = "conveyor-pg"
    section = "postgresql"
    requirements = [f"-e {ROOT}[redis,postgres]", "redis==8.1.0", "typing_extensions==4.16.0"]
    packages = ["conveyor", "psycopg", "redis"]
    db = 11
    schema = "bench_conveyor"
    bulk_path = "app.send_many(name, calls): one multi-row INSERT per call"
    worker_flags = (ConveyorRedis.worker_flags
                    + "  (broker and results: postgresql://…?schema=bench_conveyor)")

    def environment(self) -> dict[str, str]:
        from benchmarks.systems import pg

        env = super().environment()
        env["BENCH_CONVEYOR_BROKER"] = f"{pg.url()}?schema={self.schema}"
        return env

    def preloaded(self) -> None:
        from benchmarks.systems import pg

        pg.analyze(self.schema)

    def reset(self) -> None:
        from benchmarks.systems import pg

        # The tables make themselves when the next client or worker opens the broker.
        pg.empty_schema(self.schema, install=lambda: None)
