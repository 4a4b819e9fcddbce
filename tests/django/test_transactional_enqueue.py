"""Enqueue inside the application's own transaction: Django on the PostgreSQL broker's
database (issue 19, item 3).

Celery's ``delay()`` inside ``atomic()`` publishes at once, so the task can run
before (or without) the commit; ``delay_on_commit`` waits, but a crash between
the commit and the send loses the task.  Here, when the broker is PostgreSQL
in the same database, the message row is written in the block's transaction:
a worker cannot see it before the commit, and a rollback leaves nothing.
These run in the PostgreSQL pass of the Django suite (``test_postgres.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, transaction

from conveyor import Conveyor
from tests.django.conftest import ON_POSTGRES, ROOT, wait_for
from tests.django.testapp.models import Order
from tests.django.testapp.tasks import add

pytestmark = pytest.mark.skipif(not ON_POSTGRES, reason="runs in the PostgreSQL pass")


def broker_url() -> str:
    """The test database itself, tables in a schema of their own."""
    params = connection.get_connection_params()
    return (f"postgresql://{params.get('user') or 'postgres'}@{params.get('host') or '127.0.0.1'}"
            f":{params.get('port') or 5432}/{params['dbname']}"
            f"?schema=tx_{uuid.uuid4().hex[:10]}")


@pytest.fixture
def pg_app(app: Any) -> Iterator[Any]:
    url = broker_url()
    app.config_from_object({"broker_url": url}, namespace=None)
    watcher = Conveyor("watcher", broker=url, set_as_current=False)
    app.watcher = watcher
    yield app
    watcher.broker.close()


def queued(app: Any) -> int:
    """What another connection (a worker's) can see."""
    return sum(s.ready + s.delayed for s in app.watcher.broker.stats(["default"]))


def test_delay_inside_atomic_is_queued_with_the_commit(pg_app: Any) -> None:
    with transaction.atomic():
        Order.objects.create(number="A-1")
        result = add.delay(1, 2)
        assert queued(pg_app) == 0  # written, but not committed: no worker sees it
        assert connection.run_on_commit == []  # nothing left to do at commit
    assert queued(pg_app) == 1
    (delivery,) = pg_app.watcher.broker.reserve(["default"], 1, 30, 1)
    assert delivery.id == result.id


def test_rollback_leaves_neither_data_nor_task(pg_app: Any) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Order.objects.create(number="A-2")
        add.delay(1, 2)
        add.delay_on_commit(3, 4)
        raise RuntimeError("roll back")
    assert queued(pg_app) == 0 and not Order.objects.filter(number="A-2").exists()


def test_rolled_back_savepoint_drops_only_its_tasks(pg_app: Any) -> None:
    with transaction.atomic():
        add.delay(1, 1)
        with pytest.raises(RuntimeError), transaction.atomic():
            add.delay(2, 2)
            raise RuntimeError("inner rollback")
    assert queued(pg_app) == 1


def test_outside_a_transaction_it_is_queued_at_once(pg_app: Any) -> None:
    add.delay(1, 2)
    assert queued(pg_app) == 1


def test_another_database_falls_back_to_waiting_for_the_commit(app: Any) -> None:
    """A broker elsewhere cannot share the transaction: delay_on_commit waits for
    the commit as before (the broker here is the memory one)."""
    with transaction.atomic():
        add.delay_on_commit(1, 2)
        assert len(connection.run_on_commit) == 1
    assert sum(s.ready for s in app.broker.stats(["default"])) == 1


# -- the web process dies ------------------------------------------------------------
SLOW_COMMIT = """
CREATE OR REPLACE FUNCTION conveyor_test_slow_commit() RETURNS trigger AS $$
BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER conveyor_test_slow_commit AFTER INSERT ON {table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION conveyor_test_slow_commit();
"""


def writer(pg_app: Any, db_name: str, number: str) -> subprocess.Popen[str]:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.django.settings",
           "CONVEYOR_DJANGO_DB_NAME": db_name, "PYTHONPATH": str(ROOT),
           "CONVEYOR_TEST_BROKER": pg_app.conf.broker_url}
    return subprocess.Popen([sys.executable, str(Path(ROOT, "tests/django/tx_writer.py")),
                             number], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, start_new_session=True)


def read_until(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    while line := proc.stdout.readline():
        if line.startswith(word):
            return line.strip()
    raise AssertionError(f"the writer exited (status {proc.wait(5)}) before {word!r}")


def kill(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def backend_alive(pid: int) -> bool:
    """Whether the server still runs the writer's session (it ends its COMMIT first)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid])
        return cursor.fetchone() is not None


def outcome(pg_app: Any, number: str) -> tuple[bool, int]:
    """(the order was committed, tasks a worker can take)."""
    return Order.objects.filter(number=number).exists(), queued(pg_app)


@pytest.mark.parametrize("moment", ["after the writes", "inside the commit",
                                    "after the commit"])
def test_killing_the_web_process_never_splits_data_from_task(
        pg_app: Any, db_name: str, moment: str) -> None:
    """SIGKILL the web process before it commits, while PostgreSQL runs its COMMIT
    (a deferred trigger holds the commit for 2 s), and after: the order and its
    task are committed together or not at all, never one without the other."""
    number = f"K-{uuid.uuid4().hex[:8]}"
    table = Order._meta.db_table
    if moment == "inside the commit":
        with connection.cursor() as cursor:
            cursor.execute(SLOW_COMMIT.format(table=connection.ops.quote_name(table)))
    proc = writer(pg_app, db_name, number)
    try:
        backend = int(read_until(proc, "written").split()[-1])
        assert outcome(pg_app, number) == (False, 0)  # nothing visible before the commit
        if moment != "after the writes":
            assert proc.stdin is not None
            proc.stdin.write("commit\n")
            proc.stdin.flush()
            read_until(proc, "committing" if moment == "inside the commit" else "committed")
        kill(proc)
        if moment == "inside the commit":
            # The server finishes (or abandons) the COMMIT on its own: wait until the
            # writer's backend is gone (bounded), not for a fixed time.
            wait_for(lambda: not backend_alive(backend), 30, "the writer's session to end")
        committed, tasks = outcome(pg_app, number)
        assert tasks == int(committed), (moment, committed, tasks)
        if moment == "after the writes":
            assert (committed, tasks) == (False, 0)
        if moment == "after the commit":
            assert (committed, tasks) == (True, 1)
    finally:
        if proc.poll() is None:
            kill(proc)
        if moment == "inside the commit":
            with connection.cursor() as cursor:
                cursor.execute(f"DROP TRIGGER IF EXISTS conveyor_test_slow_commit ON "
                               f"{connection.ops.quote_name(table)}")


# -- the schema, made by manage.py migrate ------------------------------------------
def schema_version(dsn_params: dict[str, Any], schema: str,
                   component: str = "broker") -> int | None:
    import psycopg

    with psycopg.connect(**dsn_params) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".conveyor_schema',)).fetchone()
        if found is None or found[0] is None:
            return None
        row = conn.execute(f'SELECT version FROM "{schema}".conveyor_schema '
                           "WHERE component = %s", (component,)).fetchone()
        return None if row is None else int(row[0])


def test_migration_creates_the_broker_tables_in_djangos_database(app: Any) -> None:
    """0004_postgres_stores: what ``conveyor db upgrade`` does, from ``migrate``, for a
    PostgreSQL broker in the migrated database; a broker elsewhere is left alone."""
    from importlib import import_module

    migration = import_module("conveyor.contrib.django.migrations.0004_postgres_stores")
    params = connection.get_connection_params()
    here = broker_url()
    app.config_from_object({"broker_url": here}, namespace=None)
    with connection.schema_editor() as editor:
        migration.create_postgres_stores(None, editor)
    assert schema_version(params, here.rsplit("schema=", 1)[1]) is not None
    assert schema_version(params, here.rsplit("schema=", 1)[1], "events") is not None
    elsewhere = here.replace(f"/{params['dbname']}?", "/postgres?")
    app.config_from_object({"broker_url": elsewhere}, namespace=None)
    with connection.schema_editor() as editor:
        migration.create_postgres_stores(None, editor)
    assert schema_version({**params, "dbname": "postgres"},
                          elsewhere.rsplit("schema=", 1)[1]) is None


def test_a_later_migration_upgrades_tables_an_earlier_one_made(app: Any) -> None:
    """0005_postgres_broker_churn: tables made at version 2 by 0004 reach version 3
    (ADR 0019) from ``migrate``, run by the role that owns them."""
    from importlib import import_module

    import psycopg

    migration = import_module("conveyor.contrib.django.migrations.0005_postgres_broker_churn")
    params = connection.get_connection_params()
    url = broker_url()
    schema = url.rsplit("schema=", 1)[1]
    app.config_from_object({"broker_url": url}, namespace=None)
    Conveyor("maker", broker=url, set_as_current=False).broker.close()
    with psycopg.connect(**params, autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".conveyor_schema SET version = 2 '
                     "WHERE component = 'broker'")
    with connection.schema_editor() as editor:
        migration.create_postgres_stores(None, editor)
    assert schema_version(params, schema) == 3
