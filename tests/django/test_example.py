"""``make demo`` works: the example shop runs end to end and every check passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.django.conftest import ON_POSTGRES, ROOT


@pytest.mark.slow
@pytest.mark.skipif(ON_POSTGRES, reason="the example runs on SQLite")
def test_the_demo_passes_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "SHOP_VAR": str(tmp_path / "var")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    done = subprocess.run([sys.executable, "examples/run_demo.py"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "9/9 checks passed" in done.stdout
    assert "FAIL" not in done.stdout
    assert (tmp_path / "var" / "shop.sqlite3").exists()


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(ON_POSTGRES, reason="run once, from the SQLite pass")
def test_the_demo_passes_every_check_on_postgresql(tmp_path: Path, pg_dsn: str) -> None:
    """``make demo PG=1``: the shop's tables and its queue in one PostgreSQL database
    (a database of this test's own, made by the demo and dropped afterwards)."""
    import psycopg
    from psycopg import conninfo

    database = f"{conninfo.conninfo_to_dict(pg_dsn)['dbname']}_demo"
    url = pg_dsn.rsplit("/", 1)[0] + f"/{database}"
    env = {**os.environ, "SHOP_VAR": str(tmp_path / "var")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    try:
        done = subprocess.run([sys.executable, "examples/run_demo.py", "--postgres", url],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "9/9 checks passed" in done.stdout
        assert "FAIL" not in done.stdout
        assert not (tmp_path / "var" / "shop.sqlite3").exists()
        with psycopg.connect(url) as conn:
            components = dict(conn.execute(
                "SELECT component, version FROM conveyor.conveyor_schema").fetchall())
            results = conn.execute(
                "SELECT count(*) FROM conveyor_taskresult").fetchone()[0]
        assert components.get("broker") == 3  # the queue lived beside the shop's tables
        assert results >= 9
    finally:
        with psycopg.connect(conninfo.make_conninfo(pg_dsn, dbname="postgres"),
                             autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
