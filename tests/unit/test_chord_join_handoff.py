"""Chord headers run while more work waits leave their result and their join
to the supervisor (ADR 0033): one store call for the results at hand, the
body sent by the supervisor when that call completed the chord, once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from conveyor import _workflow as workflow
from conveyor import chord
from conveyor.exceptions import BrokerError
from conveyor.resultstores.base import FencedWrite, JoinPart, Written
from conveyor.resultstores.memory import MemoryResultStore
from conveyor.testing import make_test_app, run_worker
from conveyor.worker.supervisor import Supervisor

HEADERS = 200  # queued before the worker starts: every reserve fills its prefetch


def _spy_store(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each batched write-and-join call."""
    batches: list[int] = []
    original = MemoryResultStore.set_many_fenced_and_join

    def spy(self: MemoryResultStore, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
            ttl: float) -> list[Written]:
        batches.append(len(writes))
        return original(self, writes, ttl)

    monkeypatch.setattr(MemoryResultStore, "set_many_fenced_and_join", spy)
    return batches


def _app() -> tuple[Any, Any, Any, list[int]]:
    app = make_test_app()
    runs: list[int] = []

    @app.task
    def echo(value: int) -> int:
        return value

    @app.task
    def total(values: list[int]) -> int:
        runs.append(len(values))
        return sum(values)

    return app, echo, total, runs


def test_the_supervisor_writes_joins_and_sends_the_body(monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _spy_store(monkeypatch)
    fired: list[int] = []
    send_body = Supervisor._send_body

    def spy(self: Supervisor, delivery: Any, parts: list[bytes]) -> bool:
        fired.append(len(parts))
        return send_body(self, delivery, parts)

    monkeypatch.setattr(Supervisor, "_send_body", spy)
    app, echo, total, runs = _app()
    result = chord([echo.s(i) for i in range(HEADERS)])(total.s())
    with run_worker(app, concurrency=2, prefetch_multiplier=4):
        assert result.get(timeout=30) == sum(range(HEADERS))
    assert fired == [HEADERS] and runs == [HEADERS]
    assert sum(batches) == HEADERS and max(batches) > 1


def test_a_body_the_supervisor_cannot_send_is_sent_by_the_completer_s_rerun(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The completing header's message goes back unacknowledged; its rerun's join
    gets the parts again (the store remembers the completing index)."""
    failures = [BrokerError("broker away")]
    on_joined = workflow.on_joined

    def flaky(*args: Any) -> None:
        if failures:
            raise failures.pop()
        on_joined(*args)

    monkeypatch.setattr(workflow, "on_joined", flaky)
    app, echo, total, runs = _app()
    result = chord([echo.s(i) for i in range(HEADERS)])(total.s())
    with run_worker(app, concurrency=2, prefetch_multiplier=4):
        assert result.get(timeout=30) == sum(range(HEADERS))
    assert not failures and runs == [HEADERS]
