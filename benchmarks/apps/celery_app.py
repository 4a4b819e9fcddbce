"""Celery 5: Redis broker and Redis result backend, defaults otherwise."""

from __future__ import annotations

from typing import Any

from celery import Celery

from benchmarks.apps import _counter

app = Celery("bench", broker=_counter.url(), backend=_counter.url())
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.incr")
def incr() -> int:
    return _counter.incr()


@app.task(name="bench.echo")
def echo(value: Any) -> Any:
    return value


@app.task(name="bench.collect")
def collect(results: list[Any]) -> int:
    return len(results)
