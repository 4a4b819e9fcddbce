"""Huey: RedisHuey with ``notify_result=True`` (BLPOP on results, its low-latency mode)."""

from __future__ import annotations

from typing import Any

from huey import RedisHuey

from benchmarks.apps import _counter

huey = RedisHuey("bench", url=_counter.url(), notify_result=True)


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
