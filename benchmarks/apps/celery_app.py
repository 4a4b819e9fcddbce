"""Celery 5: Redis broker and Redis result backend, defaults otherwise.

``BENCH_CELERY_BROKER`` puts the broker on RabbitMQ instead (the RabbitMQ
section), with publisher confirms as the others there have them.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from benchmarks.apps import _counter

BROKER = os.environ.get("BENCH_CELERY_BROKER") or _counter.url()
app = Celery("bench", broker=BROKER, backend=_counter.url())
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)
if BROKER.startswith("amqp"):
    app.conf.broker_transport_options = {"confirm_publish": True}


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
