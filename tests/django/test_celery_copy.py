"""``manage.py conveyor_copy_celery_data`` on real django-celery-beat/-results tables.

The source rows are written by django-celery-beat's and django-celery-results'
own models (their migrations make the tables), on SQLite and PostgreSQL, and
the command is run twice: the second run must change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_DSN

ROOT = Path(__file__).resolve().parents[2]


def run_check(env: dict[str, str]) -> dict[str, Any]:
    env = {**os.environ, **env, "DJANGO_SETTINGS_MODULE": "tests.django.celery_copy.settings",
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "tests.django.celery_copy.check"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    if request.param == "sqlite":
        yield {"CONVEYOR_DJANGO_DB": "sqlite", "CONVEYOR_DJANGO_DB_NAME": str(tmp_path / "db")}
        return
    psycopg = pytest.importorskip("psycopg")
    request.getfixturevalue("pg_dsn")  # fails under CI when PostgreSQL is down
    name = f"conveyor_copy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield {"CONVEYOR_DJANGO_DB": "postgres", "CONVEYOR_DJANGO_DB_NAME": name,
               "CONVEYOR_TEST_PG": PG_DSN}
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_copy_keeps_ids_schedules_runs_and_results(database: dict[str, str]) -> None:
    """What a switch-over needs from the old tables: every periodic task with its
    id, schedule kind (interval, crontab, solar, clocked), last run and run count;
    results readable through AsyncResult and GroupResult.restore; sequences moved
    past the copied ids; a second run copies the same rows again and adds none."""
    got = run_check(database)
    first, second = got["reports"]
    assert first == second
    assert "django_celery_beat_periodictask: 4 row(s)" in first
    assert "django_celery_results_taskresult: 2 row(s)" in first
    assert any("pickled-1" in line and "not JSON" in line for line in first)
    tasks = got["tasks"]
    assert {name: t["id"] for name, t in tasks.items()} == {
        "every": 51, "cron": 52, "sun": 53, "once": 54}
    assert tasks["every"]["schedule"] == [41, None, None, None]
    assert tasks["cron"]["schedule"] == [None, 42, None, None]
    assert tasks["sun"]["schedule"] == [None, None, 43, None]
    assert tasks["once"]["schedule"] == [None, None, None, 44]
    # Disabled, "cron" has no last run in either app (both forget it on save).
    assert {n: t["last_run_at"] for n, t in tasks.items() if n != "cron"} == dict.fromkeys(
        ["every", "sun", "once"], "2026-11-30T08:15:00+00:00")
    assert tasks["cron"]["last_run_at"] is None
    assert {t["runs"] for t in tasks.values()} == {7}
    assert tasks["cron"]["enabled"] is False and tasks["cron"]["kwargs"] == '{"full": true}'
    assert tasks["every"]["queue"] == "reports" and tasks["once"]["one_off"] is True
    assert got["schedules"]["interval"] == [[10, "seconds"]]
    assert got["schedules"]["crontab"] == [["30", "4", "Europe/Paris"]]
    assert got["schedules"]["solar"] == [["sunrise", "48.850000", "2.350000"]]
    assert got["fresh_interval_id"] > 41  # past the copied id: the sequence was moved
    assert got["ok"] == {"n": 3} and json.loads(got["ok_args"]) == [1, 2]
    assert got["failure"] == ["FAILURE", "ValueError", "boom"]
    assert got["pickled"] == "PENDING"
    assert got["group"] == ["ok-1", "bad-1"]
    assert got["result_rows"] == 2
