"""Sending when the transaction commits: ``delay_on_commit`` and ``task_enqueue_on_commit``."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from conveyor._message import Message
from conveyor.testing import run_worker
from tests.django.testapp.models import Order
from tests.django.testapp.tasks import add, process_order, routed_report


def waiting(app: Any, queue: str = "default") -> int:
    return sum(s.ready + s.delayed for s in app.broker.stats([queue]))


def test_delay_on_commit_waits_for_the_commit(broker_app: Any) -> None:
    app = broker_app
    with transaction.atomic():
        result = add.delay_on_commit(1, 2)
        assert waiting(app) == 0
    assert waiting(app) == 1
    (delivery,) = app.broker.reserve(["default"], 1, 30, 1)
    assert delivery.id == result.id  # the id handed out before the commit is the real one


def test_rolled_back_transaction_sends_nothing(app: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        add.delay_on_commit(1, 2)
        add.apply_async_on_commit((3, 4), countdown=5)
        raise RuntimeError("roll back")
    assert waiting(app) == 0


def test_nested_atomic_waits_for_the_outermost_commit(app: Any) -> None:
    with transaction.atomic():
        with transaction.atomic():
            add.delay_on_commit(1, 2)
        assert waiting(app) == 0
    assert waiting(app) == 1


def test_rolled_back_savepoint_drops_only_its_sends(app: Any) -> None:
    with transaction.atomic():
        add.delay_on_commit(1, 1)
        with pytest.raises(RuntimeError), transaction.atomic():
            add.delay_on_commit(2, 2)
            raise RuntimeError("inner rollback")
    assert waiting(app) == 1


def test_outside_a_transaction_it_sends_now(app: Any) -> None:
    add.delay_on_commit(1, 2)
    assert waiting(app) == 1


def test_options_survive_the_wait(app: Any) -> None:
    with transaction.atomic():
        routed_report.apply_async_on_commit(("q1",), priority=7)
    (delivery,) = app.broker.reserve(["orders"], 1, 30, 1)  # routed by CELERY_TASK_ROUTES
    assert delivery.priority == 6  # 7 is served in its priority step, 6
    assert Message.decode(delivery.body, ["json"]).priority == 7


def test_bad_arguments_fail_at_the_call_not_at_commit(app: Any) -> None:
    with transaction.atomic():
        with pytest.raises(TypeError):
            add.delay_on_commit(1)
        with pytest.raises(Exception, match="primary key"):
            process_order.delay_on_commit(Order(number="x"))


def test_setting_makes_plain_delay_wait(app: Any) -> None:
    app.config_from_object({"task_enqueue_on_commit": True}, namespace=None)
    with transaction.atomic():
        add.delay(1, 2)
        app.send_task("tests.django.testapp.tasks.add", (5, 6))
        add.apply_async((1, 1), on_commit=False)  # explicit opt-out sends now
        assert waiting(app) == 1
    assert waiting(app) == 3
    with pytest.raises(RuntimeError), transaction.atomic():
        add.delay(1, 2)
        raise RuntimeError("roll back")
    assert waiting(app) == 3


def test_worker_sees_the_committed_row(broker_app: Any) -> None:
    app = broker_app
    with run_worker(app, queues=["default"]) as worker:
        with transaction.atomic():
            order = Order.objects.create(number="A-1")
            result = process_order.delay_on_commit(order.pk)
        assert result.get(timeout=10) == "A-1"
        worker.join()
    order.refresh_from_db()
    assert order.status == "processed"
