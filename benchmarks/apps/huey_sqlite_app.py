"""Huey on its SQLite storage: one file shared by the consumer's processes and the client."""

from __future__ import annotations

import os
from typing import Any

from huey import SqliteHuey

from benchmarks.apps import _counter

huey = SqliteHuey("bench", filename=os.environ["BENCH_HUEY_SQLITE"])


@huey.task(name="bench.noop")
def noop() -> None:
    return None


@huey.task(name="bench.incr")
def incr() -> int:
    return _counter.incr()


@huey.task(name="bench.echo")
def echo(value: Any) -> Any:
    return value


@huey.task(name="bench.collect")
def collect(results: list[Any]) -> int:
    return len(results)
