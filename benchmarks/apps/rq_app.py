"""RQ: plain functions; RQ stores every return value (``result_ttl`` default)."""

from __future__ import annotations

from typing import Any

from benchmarks.apps import _counter


def noop() -> None:
    return None


def incr() -> int:
    return _counter.incr()


def echo(value: Any) -> Any:
    return value


def collect() -> int:
    return 1
