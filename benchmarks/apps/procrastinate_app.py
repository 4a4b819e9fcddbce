"""Procrastinate: the benchmark tasks, in the schema the harness names
(``BENCH_PG_CONNINFO`` sets ``search_path``).  Sync tasks, as the other
systems' are; Procrastinate runs them in a thread of the worker's loop."""

from __future__ import annotations

import os
from typing import Any

import procrastinate

from benchmarks.apps import _counter

QUEUE = "bench"
app = procrastinate.App(connector=procrastinate.PsycopgConnector(
    conninfo=os.environ["BENCH_PG_CONNINFO"]))


@app.task(name="bench.noop", queue=QUEUE)
def noop() -> None:
    return None


@app.task(name="bench.incr", queue=QUEUE)
def incr() -> int:
    return _counter.incr()


@app.task(name="bench.echo", queue=QUEUE)
def echo(value: Any) -> Any:
    return value
