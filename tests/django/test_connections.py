"""Database connections around tasks, across fork, and across a PostgreSQL restart."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections
from django.db.backends.signals import connection_created

from conveyor import signals
from conveyor.contrib.django._connections import prepare_connections, release_connections
from conveyor.testing import run_worker
from tests.django.conftest import ON_POSTGRES, Processes, wait_for
from tests.django.testapp.models import Touch
from tests.django.testapp.tasks import touch


@pytest.fixture
def max_age(request: pytest.FixtureRequest) -> Iterator[float | None]:
    """Set CONN_MAX_AGE for the test (also on connections already made)."""
    value = request.param
    saved = connection.settings_dict["CONN_MAX_AGE"]
    connection.settings_dict["CONN_MAX_AGE"] = value
    connection.close()
    yield value
    connection.settings_dict["CONN_MAX_AGE"] = saved
    connection.close()


class Opened:
    """Counts connections opened per thread (Django's connection_created signal)."""

    def __init__(self) -> None:
        self.by_thread: dict[str, int] = {}

    def __call__(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        name = threading.current_thread().name
        self.by_thread[name] = self.by_thread.get(name, 0) + 1

    def __enter__(self) -> Opened:
        connection_created.connect(self)
        return self

    def __exit__(self, *exc: object) -> None:
        connection_created.disconnect(self)


def test_the_app_wires_the_hooks() -> None:
    assert prepare_connections in signals.message_prerun.live_receivers()
    assert release_connections in signals.message_postrun.live_receivers()


@pytest.mark.parametrize("max_age", [0], indirect=True)
def test_conn_max_age_zero_closes_after_each_task(app: Any, max_age: float) -> None:
    with Opened() as opened, run_worker(app, queues=["default"], concurrency=1) as worker:
        for i in range(3):
            touch.delay(f"t{i}").get(timeout=10)
        worker.join()
    assert sum(opened.by_thread.values()) >= 3  # one per task (results use it too)


@pytest.mark.parametrize("max_age", [None], indirect=True)
def test_persistent_connections_are_reused(app: Any, max_age: float | None) -> None:
    with Opened() as opened, run_worker(app, queues=["default"], concurrency=1) as worker:
        for i in range(3):
            touch.delay(f"p{i}").get(timeout=10)
        worker.join()
    worker_counts = [n for name, n in opened.by_thread.items() if "consumer" in name]
    assert worker_counts == [1]


@pytest.mark.parametrize("max_age", [None], indirect=True)
def test_hooks_leave_transactions_alone(transactional_db: None, max_age: float | None) -> None:
    from django.db import transaction

    with transaction.atomic():
        Touch.objects.create(key="inside", pid=1)
        prepare_connections()
        release_connections()
        assert connection.in_atomic_block and connection.connection is not None
    assert Touch.objects.filter(key="inside").exists()


@pytest.mark.parametrize("max_age", [60], indirect=True)
def test_an_expired_connection_is_closed_before_the_next_task(
        transactional_db: None, max_age: float) -> None:
    import time

    Touch.objects.count()
    assert connection.connection is not None
    connection.close_at = time.monotonic() - 1  # CONN_MAX_AGE has passed
    prepare_connections()
    assert connection.connection is None


@pytest.mark.skipif(not ON_POSTGRES, reason="needs a database server to drop the connection")
@pytest.mark.parametrize("max_age", [None], indirect=True)
def test_a_dead_connection_is_replaced_before_the_next_task(
        transactional_db: None, max_age: float | None) -> None:
    import psycopg

    old_pid = _backend_pid()
    params = connection.get_connection_params()
    with psycopg.connect(**params, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [old_pid])
    prepare_connections()  # no error happened yet: only the health check can tell
    assert Touch.objects.count() == 0
    assert _backend_pid() != old_pid


def _child(out: Any) -> None:
    inherited = connections["default"].connection is not None
    Touch.objects.create(key="child", pid=0, backend_pid=_backend_pid())
    out.put((inherited, _backend_pid()))


def _backend_pid() -> int | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


def test_fork_never_shares_a_connection(transactional_db: None) -> None:
    Touch.objects.create(key="parent", pid=0)
    parent_pid = _backend_pid()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_child, args=(out,))
    child.start()
    inherited, child_pid = out.get(timeout=30)
    child.join(30)
    assert child.exitcode == 0
    assert inherited is False  # the child started with no connection
    if ON_POSTGRES:
        assert child_pid != parent_pid
    # The parent's connection survived the child's use and exit.
    assert _backend_pid() == parent_pid
    assert set(Touch.objects.values_list("key", flat=True)) == {"parent", "child"}


@pytest.mark.skipif(not ON_POSTGRES, reason="needs a database server to restart")
def test_worker_survives_postgresql_terminating_its_backends(
        transactional_db: None, processes: Processes, tmp_path: Path, db_name: str) -> None:
    """Persistent connections (CONN_MAX_AGE=60): kill every backend between two tasks."""
    from tests.django.proj import app

    worker = processes.start("-m", "conveyor", "-A", "tests.django.proj", "worker", "-Q",
                             "default", "-c", "1", "-P", "prefork", "-l", "INFO",
                             extra_env={"CONVEYOR_TEST_CONN_MAX_AGE": "60"},
                             output=tmp_path / "worker.log")
    app.config_from_object({"broker_url": processes.env["CONVEYOR_TEST_BROKER"]},
                           namespace=None)
    first = touch.delay("before").get(timeout=30)
    assert first["backend_pid"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = %s AND pid <> pg_backend_pid()", [db_name])
    second = touch.delay("after").get(timeout=30)
    assert second["backend_pid"] != first["backend_pid"]
    assert worker.poll() is None, (tmp_path / "worker.log").read_text()
    wait_for(lambda: Touch.objects.filter(key="after").exists(), 10, "the second task's row")


def test_a_table_locked_in_shared_cache_mode_is_waited_out(transactional_db: None) -> None:
    """Django's in-memory SQLite *test* databases use shared-cache mode, where reading a
    table another connection is writing fails at once with "database table is locked"
    (the busy timeout does not apply; the docs' own test in django.md hit it while a
    worker thread stored a result).  The stores' reads wait the lock out."""
    import sqlite3

    from django.db import OperationalError

    from conveyor.contrib.django._connections import waiting_out_locks

    uri = "file:conveyor-lock-test?mode=memory&cache=shared"
    writer = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
    reader = sqlite3.connect(uri, uri=True, isolation_level=None)
    writer.execute("CREATE TABLE t (x)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO t VALUES (1)")

    def read() -> list[Any]:
        try:
            return reader.execute("SELECT x FROM t").fetchall()
        except sqlite3.OperationalError as exc:  # what Django's cursor wrapper does
            raise OperationalError(*exc.args) from exc

    with pytest.raises(OperationalError, match="locked"):
        read()  # the failure being waited out is real
    release = threading.Timer(0.2, lambda: writer.execute("COMMIT"))
    release.start()
    try:
        assert waiting_out_locks("default", read) == [(1,)]
    finally:
        release.join()
        writer.close()
        reader.close()
