"""Every Django test again, on PostgreSQL.

Django holds one database configuration per process, so the PostgreSQL run
is a second pytest process over this directory with
``CONVEYOR_DJANGO_DB=postgres``.  Like every service test it skips on a
laptop without PostgreSQL and fails under CI=true (the ``pg_dsn`` fixture).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.django.conftest import ON_POSTGRES, ROOT


@pytest.mark.postgres
@pytest.mark.skipif(ON_POSTGRES, reason="this is the PostgreSQL run")
def test_django_suite_on_postgresql(pg_dsn: str) -> None:
    env = {**os.environ, "CONVEYOR_DJANGO_DB": "postgres", "CONVEYOR_TEST_PG": pg_dsn}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "tests/django", "-W", "ignore::pytest.PytestUnraisableExceptionWarning"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    assert done.returncode == 0, f"{done.stdout[-6000:]}\n{done.stderr[-3000:]}"
    # Skipped there: this test, and the demo (SQLite by design); nothing failed.
    assert "passed" in summary and "failed" not in summary and "error" not in summary, summary
