"""The ``django.tasks`` backend: ``@task`` functions run on Conveyor workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from django_tasks import TaskResultStatus, default_task_backend, task_backends
from django_tasks.exceptions import InvalidTaskError, TaskResultDoesNotExist
from django_tasks.signals import task_enqueued, task_finished, task_started

from conveyor._message import Message
from conveyor.contrib.django.tasks import RUNNER, ConveyorBackend, conveyor_priority
from conveyor.testing import run_worker
from tests.django.testapp import jobs
from tests.django.testapp.models import Touch

QUEUES = ["default", "emails"]


@pytest.fixture
def worker(app: Any) -> Iterator[Any]:
    with run_worker(app, queues=QUEUES, concurrency=2) as running:
        yield running


@pytest.fixture
def signals_seen() -> Iterator[list[tuple[str, str, Any]]]:
    seen: list[tuple[str, str, Any]] = []

    def receiver(name: str) -> Any:
        def record(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, task_result.id, task_result.status))
        return record

    receivers = {sig: receiver(name) for sig, name in
                 [(task_enqueued, "enqueued"), (task_started, "started"),
                  (task_finished, "finished")]}
    for sig, fn in receivers.items():
        sig.connect(fn)
    yield seen
    for sig, fn in receivers.items():
        sig.disconnect(fn)


def finished(result: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result.refresh()
        if result.is_finished:
            return result
        assert time.monotonic() < deadline, f"{result.id} still {result.status}"
        time.sleep(0.02)


def test_the_backend_is_configured(app: Any) -> None:
    backend = task_backends["default"]
    assert isinstance(backend, ConveyorBackend)
    assert backend.supports_defer and backend.supports_get_result and backend.supports_priority
    assert backend.supports_async_task


def test_enqueue_runs_on_a_worker(app: Any, worker: Any,
                                  signals_seen: list[tuple[str, str, Any]]) -> None:
    result = jobs.multiply.enqueue(6, 7)
    assert result.status == TaskResultStatus.READY and result.enqueued_at is not None
    done = finished(result)
    assert done.status == TaskResultStatus.SUCCESSFUL and done.return_value == 42
    assert done.started_at and done.finished_at and done.attempts == 1
    assert done.args == [6, 7] and done.backend == "default"
    fetched = jobs.multiply.get_result(result.id)
    assert fetched.return_value == 42 and fetched.task is jobs.multiply
    worker.join()
    assert [name for name, rid, _ in signals_seen if rid == result.id] == [
        "enqueued", "started", "finished"]


def test_a_queued_task_is_ready_not_missing(app: Any) -> None:
    result = jobs.multiply.enqueue(1, 1)
    again = default_task_backend.get_result(result.id)
    assert again.status == TaskResultStatus.READY and again.args == [1, 1]
    with pytest.raises(TaskResultDoesNotExist):
        default_task_backend.get_result("no-such-id")


def test_queue_and_priority_reach_the_message(app: Any) -> None:
    result = jobs.send_email.enqueue("a@example.com")
    (delivery,) = app.broker.reserve(["emails"], 1, 30, 1)
    message = Message.decode(delivery.body, ["json"])
    assert (message.id, message.task, message.queue) == (result.id, RUNNER, "emails")
    assert message.priority == conveyor_priority(50, 0) == 0  # 0: already the most urgent
    with pytest.raises(InvalidTaskError):
        jobs.multiply.using(queue_name="nowhere")


def test_priorities_keep_their_order() -> None:
    """Django: higher first; Conveyor (as Celery on Redis): lower first."""
    values = [conveyor_priority(p, 4) for p in (-100, -50, -1, 0, 1, 50, 100)]
    assert values == sorted(values, reverse=True)
    assert values[0] == 9 and values[3] == 4 and values[-1] == 0
    assert conveyor_priority(-100, None) == 9 and conveyor_priority(100, None) == 0


def test_run_after_waits_in_the_broker(app: Any) -> None:
    later = jobs.multiply.using(run_after=timezone.now() + timedelta(seconds=30))
    later.enqueue(2, 2)
    (stats,) = app.broker.stats(["default"])
    assert (stats.ready, stats.delayed) == (0, 1)


def test_run_after_runs_when_due(app: Any, worker: Any) -> None:
    soon = jobs.multiply.using(run_after=timezone.now() + timedelta(seconds=1))
    start = time.monotonic()
    result = soon.enqueue(3, 3)
    assert finished(result).return_value == 9
    assert time.monotonic() - start >= 0.9


def test_async_and_context_tasks(app: Any, worker: Any) -> None:
    assert finished(jobs.async_add.enqueue(2, 5)).return_value == 7
    assert finished(jobs.attempt_plus.enqueue(10)).return_value == 11


def test_failures_are_reported(app: Any, worker: Any,
                               signals_seen: list[tuple[str, str, Any]]) -> None:
    result = finished(jobs.explode.enqueue())
    assert result.status == TaskResultStatus.FAILED
    (error,) = result.errors
    assert error.exception_class is ValueError and "boom" in error.traceback
    with pytest.raises(ValueError):
        result.return_value  # noqa: B018
    worker.join()
    assert ("finished", result.id, TaskResultStatus.FAILED) in signals_seen


def test_tasks_touch_the_database_on_the_worker(app: Any, worker: Any) -> None:
    finished(jobs.send_email.enqueue("b@example.com"))
    assert Touch.objects.filter(key="email:b@example.com").exists()


def test_aenqueue_and_aget_result(app: Any, worker: Any) -> None:
    async def go() -> Any:
        result = await jobs.multiply.aenqueue(4, 5)
        for _ in range(500):
            fetched = await jobs.multiply.aget_result(result.id)
            if fetched.is_finished:
                return fetched
            await asyncio.sleep(0.02)
        raise AssertionError("not finished")

    assert asyncio.run(go()).return_value == 20


def test_enqueue_on_commit_setting_applies(app: Any) -> None:
    app.config_from_object({"task_enqueue_on_commit": True}, namespace=None)
    with transaction.atomic():
        result = jobs.multiply.enqueue(1, 2)
        assert sum(s.ready for s in app.broker.stats(["default"])) == 0
    assert sum(s.ready for s in app.broker.stats(["default"])) == 1
    assert default_task_backend.get_result(result.id).status == TaskResultStatus.READY


def test_backend_options_name_the_app(app: Any) -> None:
    backend = ConveyorBackend("x", {"OPTIONS": {"APP": "tests.django.proj:app"},
                                    "QUEUES": []})
    assert backend.app is app
    assert task_backends["default"].app is app
