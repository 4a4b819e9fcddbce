"""``conveyor db upgrade`` and ``db status`` on SQLite and PostgreSQL (issue 19, item 1).

The command creates every store's tables before any worker runs (what a
deploy step with a privileged role does) and reports the versions recorded in
``conveyor_schema``; ``status`` changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .processes import ROOT

COMPONENTS = ("beat", "broker", "control", "results")


def conveyor(url: str, *args: str) -> str:
    env = {**os.environ, "CONVEYOR_BROKER_URL": url, "CONVEYOR_RESULT_BACKEND": url,
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "conveyor", "-A", "tests.integration.worker_app",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'conveyor.db'}"
    return str(request.getfixturevalue("pg_url"))


def test_upgrade_creates_every_store_and_status_reports_it(url: str) -> None:
    assert "no Conveyor tables yet" in conveyor(url, "db", "status")
    upgraded = conveyor(url, "db", "upgrade")
    # SQLite's event tables are unversioned (created if missing); PostgreSQL's are versioned.
    for component in (*COMPONENTS, *(("events",) if url.startswith("postgres") else ())):
        assert f": {component} v" in upgraded, upgraded
    status = conveyor(url, "db", "status")
    assert [line for line in status.splitlines() if " v" in line] == [
        line for line in upgraded.splitlines() if " v" in line]
    assert "password" not in status and "@" not in status  # where, never who
    assert conveyor(url, "db", "upgrade").splitlines()[-4:] == status.splitlines()[-4:]
