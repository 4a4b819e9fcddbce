"""``self.replace(sig)`` through the real worker path, on every backend.

Celery: app/task.py Task.replace - the replacement inherits the task's id, its
callbacks and errbacks, the rest of its chain and its chord slot; the task
stops (``Ignore``) and its result resolves to the replacement's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, Task, chain, chord, group, states
from conveyor.exceptions import ConfigurationError
from conveyor.testing import run_worker

seen: list[Any] = []


@pytest.fixture
def app(backend_url: str) -> Iterator[Conveyor]:
    seen.clear()
    application = Conveyor("replace", broker=backend_url, set_as_current=False)

    @application.task
    def mul(x: int, y: int) -> int:
        return x * y

    @application.task
    def total(values: list[int]) -> int:
        return sum(values)

    @application.task
    def same(values: list[Any]) -> list[Any]:
        return values

    @application.task
    def record(value: Any) -> None:
        seen.append(value)

    @application.task
    def fail(x: int) -> None:
        raise ValueError(f"replacement failed on {x}")

    @application.task(bind=True)
    def by_call(self: Task, x: int) -> Any:
        self.replace(mul.s(x, 10))
        seen.append("not reached")

    @application.task(bind=True)
    def by_chain(self: Task, x: int) -> Any:
        return self.replace(chain(mul.s(x, 2), mul.s(3)))

    @application.task(bind=True)
    def by_group(self: Task, x: int) -> Any:
        return self.replace(group(mul.s(x, 1), mul.s(x, 2)))

    @application.task(bind=True)
    def by_failure(self: Task, x: int) -> Any:
        return self.replace(fail.s(x))

    yield application
    application.close()


def call(app: Conveyor, name: str) -> Any:
    return app.tasks[f"{__name__}.{name}"]


def test_the_task_result_resolves_to_the_replacement(app: Conveyor) -> None:
    """Celery: Task.replace freezes the replacement with the task's id (a group is
    collected into one list by celery.accumulate); code after replace() never runs."""
    by_call, by_chain, by_group = (call(app, n) for n in ("by_call", "by_chain", "by_group"))
    with run_worker(app) as worker:
        single, chained, grouped = by_call.delay(4), by_chain.delay(5), by_group.delay(3)
        assert single.get(timeout=20) == 40
        assert chained.get(timeout=20) == 30
        assert grouped.get(timeout=20) == [3, 6]
        worker.join()
    assert single.state == states.SUCCESS and "not reached" not in seen


def test_the_replacement_takes_the_task_place_in_its_chain_and_callbacks(app: Conveyor) -> None:
    """Celery: Task.replace links request.callbacks to the replacement and appends
    request.chain after it."""
    by_call, by_chain, mul, record = (call(app, n) for n in ("by_call", "by_chain", "mul",
                                                             "record"))
    with run_worker(app) as worker:
        result = chain(mul.s(1, 2), by_call.s(), mul.s(7)).delay()
        assert result.get(timeout=20) == 140, "(1*2) replaced by *10, then *7"
        linked = by_chain.apply_async((1,), link=record.s())
        assert linked.get(timeout=20) == 6
        worker.join()
    assert seen == [6], "the task's link ran once, with the replacement's value"


def test_a_replaced_chord_header_member_fills_its_slot(app: Conveyor) -> None:
    """Celery: Task.replace sets chord, group_id and group_index from the request."""
    by_call, by_chain, by_group, same = (call(app, n) for n in ("by_call", "by_chain",
                                                                "by_group", "same"))
    with run_worker(app):
        result = chord([by_call.s(1), by_chain.s(2), by_group.s(1)], same.s()).delay()
        assert result.get(timeout=20) == [10, 12, [1, 2]]


def test_a_failing_replacement_fails_the_task_and_calls_its_errbacks(app: Conveyor) -> None:
    """Celery: Task.replace links request.errbacks to the replacement."""
    by_failure, record = call(app, "by_failure"), call(app, "record")
    with run_worker(app) as worker:
        result = by_failure.apply_async((9,), link_error=record.s())
        with pytest.raises(ValueError, match="replacement failed on 9"):
            result.get(timeout=20)
        worker.join()
    assert seen == [result.id], "the errback got the failed (replacement) task's id"


def test_a_signature_in_a_chord_cannot_replace_a_task(app: Conveyor) -> None:
    """Celery: Task.replace raises ImproperlyConfigured for a signature with a chord."""
    mul = call(app, "mul")

    @app.task(bind=True)
    def wrong(self: Task) -> Any:
        return self.replace(mul.s(1, 2).set(chord={"id": "x"}))

    with run_worker(app), pytest.raises(ConfigurationError, match="must not be part of a"):
        wrong.delay().get(timeout=20)
