"""A ``get()`` that times out on a task nobody can run says why (issue 16).

Celery's ``TimeoutError`` says only that the operation timed out; the usual
cause, a worker that is not running or runs against another broker (a
relative SQLite path read from another directory), is left to guess.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.exceptions import TimeoutError
from conveyor.testing import run_worker


@pytest.fixture
def app(sqlite_url: str) -> Iterator[Conveyor]:
    application = Conveyor("waiting", broker=sqlite_url, set_as_current=False)

    @application.task(name="waiting.noop", queue="reports")
    def noop() -> None:
        return None

    yield application
    application.close()


def test_a_timeout_with_no_worker_names_the_broker_and_says_none_is_online(
        app: Conveyor, sqlite_url: str) -> None:
    result = app.send_task("waiting.noop")
    with pytest.raises(TimeoutError) as caught:
        result.get(timeout=0.2)
    message = str(caught.value)
    assert "state PENDING" in message
    assert f"no worker is online on broker {sqlite_url}" in message
    assert "conveyor -A waiting worker" in message


def test_a_timeout_with_workers_on_other_queues_names_the_queues_they_serve(
        app: Conveyor) -> None:
    with run_worker(app, queues=["default", "mail"]):
        result = app.send_task("waiting.noop")  # routed to "reports", which nobody serves
        with pytest.raises(TimeoutError) as caught:
            result.get(timeout=0.5)
    assert "1 worker(s) online" in str(caught.value)
    assert "serving queues default, mail" in str(caught.value)
