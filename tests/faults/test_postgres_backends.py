"""Case 5: PostgreSQL backends terminated mid-run (Django ORM tasks, django-db results).

A worker runs tasks that write a row through the Django ORM inside a
transaction and store their results in the ``django-db`` result store, both
on a PostgreSQL database of this test's own.  Meanwhile the test terminates
every backend of that database (``pg_terminate_backend``) several times.
Then:

* every task completed exactly once in the database: one committed row per
  task (a transaction cut off by the termination rolled back, and the task's
  ``autoretry_for`` ran it again on a fresh connection);
* every task's result is SUCCESS in the ``django-db`` store;
* nothing is left in the broker, and no worker process died.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor

from ..integration.processes import ROOT, Ledger, wait_for
from .harness import Figures, Workers, assert_nothing_lost, report, settled, total_queue

TASKS = 60
TERMINATIONS = 4


@pytest.fixture
def fault_db(pg_dsn: str) -> Iterator[str]:
    """A database of this test's own (terminating backends must not hit anyone else)."""
    import psycopg

    name = f"conveyor_faults_{os.getpid()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def db_dsn(pg_dsn: str, name: str) -> str:
    return pg_dsn.rsplit("/", 1)[0] + f"/{name}"


def terminate_backends(pg_dsn: str, name: str) -> int:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = %s AND pid <> pg_backend_pid()", (name,)).fetchall()
    return len(rows)


@pytest.mark.postgres
@pytest.mark.slow
def test_postgres_backends_terminated_mid_run(pg_dsn: str, fault_db: str,
                                              tmp_path: Path) -> None:
    import psycopg

    broker_url = f"sqlite:///{tmp_path / 'broker.db'}"
    env = {"DJANGO_SETTINGS_MODULE": "tests.django.settings", "CONVEYOR_DJANGO_DB": "postgres",
           "CONVEYOR_TEST_PG": pg_dsn, "CONVEYOR_DJANGO_DB_NAME": fault_db,
           "CONVEYOR_TEST_BROKER": broker_url, "PYTHONPATH": str(ROOT)}
    migrate = subprocess.run([sys.executable, "-m", "django", "migrate", "--noinput"],
                             cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=120, check=False)
    assert migrate.returncode == 0, migrate.stdout[-2000:] + migrate.stderr[-2000:]

    ledger = Ledger(tmp_path / "ledger.txt")
    workers = Workers(broker_url, ledger, tmp_path, app="tests.faults.django_app")
    client = Conveyor("client", broker=broker_url, set_as_current=False)
    try:
        ids = [client.send_task("tests.faults.django_app.orm_touch", [f"k{i}", 0.15]).id
               for i in range(TASKS)]
        worker = workers.start("-c", "3", env=env)
        terminated = 0
        for _ in range(TERMINATIONS):
            wait_for(lambda: len(ledger.events("start")) > len(ledger.events("end")), 30,
                     "a task inside its transaction")
            terminated += terminate_backends(pg_dsn, fault_db)
            time.sleep(0.4)  # the fault's rhythm: let work resume between terminations
        wait_for(lambda: settled(client.broker, ledger, ids), 90, "every task to complete")
        total = total_queue(client.broker, ledger, ids)
        assert_nothing_lost(total)
        with psycopg.connect(db_dsn(pg_dsn, fault_db)) as conn:
            rows: dict[str, int] = dict(
                conn.execute("SELECT key, count(*) FROM testapp_touch GROUP BY key").fetchall())
            results: dict[str, str] = dict(
                conn.execute("SELECT task_id, status FROM conveyor_taskresult").fetchall())
        assert {f"k{i}": 1 for i in range(TASKS)} == rows, "a task's row is missing or doubled"
        assert all(results.get(i) == "SUCCESS" for i in ids), \
            {i: results.get(i) for i in ids if results.get(i) != "SUCCESS"}
        assert worker.poll() is None and "exited with" not in workers.logs()
        retried = sum(1 for _, _, attempt, _ in ledger.events("start")) - TASKS
        report(Figures("5 PostgreSQL backends terminated", "sqlite+pg", TASKS, terminated,
                       len(total.lost), len(total.duplicates), None,
                       f"{TERMINATIONS} rounds, {retried} task reruns, 1 row per task, "
                       "results in django-db"))
    finally:
        workers.stop_all()
        client.close()
