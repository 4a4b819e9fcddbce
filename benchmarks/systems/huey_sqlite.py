"""Huey on SQLite (``SqliteHuey``, WAL): the embedded peer of Conveyor's SQLite broker.

Both run 2 worker processes on one file.  Huey's SQLite storage has no wake-up:
its consumer polls the queue (``-d 0.001``: every 1 ms while idle, instead of
its default 0.1 s backing off to 10 s) and its blocking ``get`` polls from
50 ms up, so the client checks the result every 1 ms instead, as the arq and
taskiq clients do.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from benchmarks.systems.base import ROOT, Client, System
from benchmarks.systems.huey import HueyClient

SQLITE_PATH = ROOT / "benchmarks" / "results" / "raw" / "huey-bench.db"


class HueySQLiteClient(HueyClient):
    def __init__(self) -> None:
        from benchmarks.apps import huey_sqlite_app

        self.tasks = huey_sqlite_app  # type: ignore[assignment]
        self.huey = huey_sqlite_app.huey

    def round_trip(self, value: Any) -> Any:
        result = self.tasks.echo(value)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            got = result.get()
            if got is not None:
                return got
            time.sleep(0.001)
        raise TimeoutError("no result within 30 s")


class HueySQLiteSystem(System):
    name = "huey-sqlite"
    label = "Huey (SQLite)"
    env = "huey"
    requirements = ["huey==3.5.4", "redis==8.1.0"]
    packages = ["huey"]
    db = 10  # only the INCR counter lives in Redis
    bulk_path = "enqueue(group(...)): one enqueue per task"
    chord_path = "group(...).then(callback)"
    worker_flags = ("huey_consumer benchmarks.apps.huey_sqlite_app.huey -k process -w 2 -q "
                    "-d 0.001  (SqliteHuey, one file)")

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["BENCH_HUEY_SQLITE"] = str(SQLITE_PATH)
        return env

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python.parent / "huey_consumer"), "benchmarks.apps.huey_sqlite_app.huey",
                 "-k", "process", "-w", str(procs), "-q", "-d", "0.001"]]

    def reset(self) -> None:
        SQLITE_PATH.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm"):
            path = Path(f"{SQLITE_PATH}{suffix}")
            if path.exists():
                os.unlink(path)

    @staticmethod
    def client() -> Client:
        return HueySQLiteClient()
