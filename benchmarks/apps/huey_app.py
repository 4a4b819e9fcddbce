"""Huey: RedisHuey with ``notify_result=True`` (BLPOP on results, its low-latency mode).

``BENCH_IGNORE_RESULT=1`` (the huey-noresult variant) makes it ``results=False``:
no task stores its return value.
"""

from __future__ import annotations

import os
from typing import Any

from huey import RedisHuey

from benchmarks.apps import _counter

huey = RedisHuey("bench", url=_counter.url(), notify_result=True,
                 results=os.environ.get("BENCH_IGNORE_RESULT") != "1")


@huey.task(name="bench.noop")
def noop() -> None:
    return None


@huey.task(name="bench.incr")
def incr() -> int:
    return _counter.incr()


@huey.task(name="bench.echo")
def echo(value: Any) -> Any:
    return value


@huey.task(name="bench.signal")
def signal(value: int) -> None:
    _counter.signal(value)


@huey.task(name="bench.collect")
def collect(results: list[Any]) -> int:
    return len(results)


@huey.task(name="bench.modules")
def modules() -> tuple[int, list[str], str]:
    """What this worker process has imported, and from where (``benchmarks/memory.py``)."""
    import sys

    return os.getpid(), sorted(sys.modules), os.path.realpath(str(sys.modules["huey"].__file__))
