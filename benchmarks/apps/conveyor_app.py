"""Conveyor: the benchmark tasks (broker, results and results-off from the harness's variables)."""

from __future__ import annotations

import os
import sys
from typing import Any

from benchmarks.apps import _counter
from conveyor import Conveyor

app = Conveyor(
    "bench",
    broker=os.environ.get("BENCH_CONVEYOR_BROKER", _counter.url()),
    backend=os.environ.get("BENCH_CONVEYOR_BACKEND") or None,
    # The results-off variant (conveyor-redis-noresult): no task stores its result.
    task_ignore_result=os.environ.get("BENCH_IGNORE_RESULT") == "1",
    # The budget's events-off variant (benchmarks/rabbitmq_budget.py).
    events_enabled=os.environ.get("BENCH_EVENTS_OFF") != "1",
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


@app.task(name="bench.signal")
def signal(value: int) -> None:
    _counter.signal(value)


@app.task(name="bench.collect")
def collect(results: list[Any]) -> int:
    return len(results)


@app.task(name="bench.modules")
def modules() -> tuple[int, list[str], str]:
    """What this worker process has imported, and from where (``benchmarks/memory.py``)."""
    return os.getpid(), sorted(sys.modules), os.path.realpath(str(sys.modules["conveyor"].__file__))
