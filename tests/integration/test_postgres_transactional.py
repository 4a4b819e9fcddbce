"""Transactional enqueue on the PostgreSQL broker (guarantee 10, outside Django).

``send_task(..., connection=conn)`` writes the message in the caller's own
transaction: a rollback queues nothing, a commit queues it, and no consumer
sees it before the commit.  (Procrastinate and Oban offer the same; Celery,
whose ``connection=`` is a kombu broker connection, cannot.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError
from conveyor.testing import run_worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(pg_url: str) -> Iterator[Conveyor]:
    """Broker and results both in PostgreSQL (the results beside the broker)."""
    application = Conveyor("txn", broker=pg_url, set_as_current=False)
    yield application
    application.close()


def test_rollback_queues_nothing_and_commit_queues_once(app: Conveyor, pg_dsn: str) -> None:
    import psycopg

    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    queue = app.conf.task_default_queue
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SELECT 1")  # the application's own write: a transaction is open
        rolled_back = app.send_task(add.name, [1, 1], connection=conn)
        assert app.broker.stats([queue])[0].ready == 0  # not committed: invisible
        conn.rollback()
        committed = add.apply_async((2, 3), connection=conn)  # opens the transaction
        assert app.broker.reserve([queue], 10, lease=30, timeout=0) == []
        conn.commit()
    assert app.broker.stats([queue])[0].ready == 1
    with run_worker(app):
        assert committed.get(timeout=10) == 5
    assert rolled_back.state == "PENDING"  # FIFO: it would have run first
    [stats] = app.broker.stats([queue])
    assert (stats.ready, stats.delayed, stats.inflight) == (0, 0, 0)


def test_a_waiting_consumer_wakes_at_the_commit(app: Conveyor, pg_dsn: str) -> None:
    import threading
    import time

    import psycopg

    with psycopg.connect(pg_dsn) as conn:
        app.send_task("any.task", connection=conn)
        timer = threading.Timer(0.3, conn.commit)
        timer.start()
        started = time.monotonic()
        got = app.broker.reserve([app.conf.task_default_queue], 1, lease=30, timeout=5)
        timer.join()
    assert len(got) == 1
    assert time.monotonic() - started < 0.9  # woken by NOTIFY, not the 1 s poll
    app.broker.ack(got)


def test_connection_needs_the_postgres_broker_and_a_psycopg_connection(
        app: Conveyor, tmp_path: Path) -> None:
    other = Conveyor("txn-sqlite", broker=f"sqlite:///{tmp_path / 'b.db'}",
                     set_as_current=False)
    with pytest.raises(ConfigurationError, match="postgresql:// broker_url"):
        other.send_task("any.task", connection=object())
    other.close()
    with pytest.raises(ConfigurationError, match="psycopg 3 connection"):
        app.send_task("any.task", connection=object())
