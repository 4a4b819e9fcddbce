"""``result_backend = "django-db"``: what the database shows (the result store contract
itself runs in test_result_store_contract.py)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor import states
from conveyor.contrib.django.models import ChordPart, TaskResult
from conveyor.contrib.django.results import DjangoResultStore
from conveyor.resultstores import result_store_from_url
from conveyor.resultstores.record import ResultRecord
from conveyor.testing import run_worker


def test_django_db_url_opens_the_django_store(transactional_db: None) -> None:
    """Through the ``conveyor.result_stores`` entry point (tests/unit/test_layering.py)."""
    assert isinstance(result_store_from_url("django-db"), DjangoResultStore)
    assert isinstance(result_store_from_url("django"), DjangoResultStore)


def test_chord_redelivery_does_not_count_twice(transactional_db: None) -> None:
    s = DjangoResultStore()
    assert s.chord_add("c2", 0, 2, b"a", 60) is None
    assert s.chord_add("c2", 0, 2, b"a", 60) is None
    assert ChordPart.objects.filter(group_id="c2").count() == 1
    assert s.chord_add("c2", 1, 2, b"b", 60) == [b"a", b"b"]


def test_worker_results_fill_the_admin_columns(broker_app: Any) -> None:
    app = broker_app
    from tests.django.testapp.tasks import add

    with run_worker(app, queues=["default"]) as worker:
        result = add.delay(2, 3)
        assert result.get(timeout=10) == 5
        worker.join()
    row = TaskResult.objects.get(task_id=result.id)
    assert (row.status, row.task_name, row.task_args, row.result) == (
        states.SUCCESS, "tests.django.testapp.tasks.add", "[2, 3]", "5")
    assert row.worker and row.date_done and row.date_started and row.expires_at
    assert row.queue == "default" and row.retries == 0


def test_failures_keep_type_message_and_traceback(app: Any) -> None:
    from tests.django.testapp.tasks import process_order

    with run_worker(app, queues=["default"]) as worker:
        result = process_order.delay(424242)
        worker.join()
    row = TaskResult.objects.get(task_id=result.id)
    assert row.status == states.FAILURE
    assert '"exc_type": "Order.DoesNotExist"' in (row.result or "")
    assert "Traceback" in (row.traceback or "")
    with pytest.raises(Exception, match="matching query does not exist"):
        result.get(timeout=5)


def test_set_then_get_returns_every_record(transactional_db: None) -> None:
    """Each stored record reads back at once (its speed is measured in benchmarks/, not
    asserted here: a timed unit test fails on a loaded machine for no fault of the code)."""
    s = DjangoResultStore()
    for i in range(50):
        payload = f'{{"task_id": "rt-{i}", "state": "SUCCESS"}}'.encode()
        s.set(f"rt-{i}", states.SUCCESS, payload, 60)
        stored = s.get(f"rt-{i}")
        assert stored is not None and stored.payload == payload


def test_chord_fail_closes_the_join_once(transactional_db: None) -> None:
    s = DjangoResultStore()
    assert s.chord_add("f", 0, 2, b"a", 60) is None
    assert s.chord_fail("f", 60) is True
    assert s.chord_fail("f", 60) is False
    assert s.chord_add("f", 1, 2, b"b", 60) is None  # closed: the body never fires
    assert not ChordPart.objects.filter(group_id="f").exists()
    assert s.chord_add("g", 0, 1, b"a", 60) == [b"a"]
    assert s.chord_fail("g", 60) is False  # fired first: nothing to fail


def test_set_fenced_refuses_a_stale_run(transactional_db: None) -> None:
    from conveyor.resultstores.record import Attempt

    s = DjangoResultStore()

    def payload(attempt: Attempt) -> bytes:
        return ResultRecord(task_id="t", state=states.STARTED,
                            attempt=attempt.as_list()).encode()

    newer, older = Attempt(100, 0, 2), Attempt(100, 0, 1)
    assert s.set_fenced("t", states.STARTED, payload(newer), 60, newer)
    assert not s.set_fenced("t", states.SUCCESS, payload(older), 60, older)
    got = s.get("t")
    assert got is not None and got.state == states.STARTED
    assert s.set_fenced("t", states.SUCCESS, payload(newer), 60, newer)


def test_a_database_that_stays_away_is_a_result_error(
        transactional_db: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A connection lost twice (the retry on a fresh one fails too) is reported as the
    store being unreachable, a ``ResultError``, which the worker retries and then hands
    the message back for; a driver error would be taken for a bug and dead-lettered
    (tests/faults/test_postgres_backends.py is the end-to-end case)."""
    from django.db import OperationalError

    from conveyor.exceptions import ResultError

    calls = []

    def dropped(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise OperationalError("server closed the connection unexpectedly")

    store = DjangoResultStore()
    monkeypatch.setattr(store, "_upsert", dropped)
    with pytest.raises(ResultError, match="unreachable: server closed") as caught:
        store.set("t1", states.SUCCESS, b"{}", 60)
    assert isinstance(caught.value.__cause__, OperationalError)
    assert len(calls) == 2  # the first failure was retried once on a new connection
