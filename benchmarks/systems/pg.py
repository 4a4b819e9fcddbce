"""The PostgreSQL section's shared ground: one server, a database of the
benchmark's own (``conveyor_bench``, created when missing; never a test
database) and a schema per system, emptied between phases.

``BENCH_PG_URL`` points elsewhere (a libpq URL naming the database).  Only
the orchestrator imports this module (it needs psycopg, which the project's
venv has); systems read their connection from the environment it sets.
"""

from __future__ import annotations

import os
from collections.abc import Callable

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/conveyor_bench"


def url() -> str:
    return os.environ.get("BENCH_PG_URL", DEFAULT_URL)


def conninfo(schema: str) -> str:
    """libpq connection string for ``schema`` alone (the peers find their tables there)."""
    import psycopg

    return psycopg.conninfo.make_conninfo(url(), options=f"-c search_path={schema}")


def reachable() -> str | None:
    """None when the server answers; otherwise why not (without a password)."""
    import psycopg

    try:
        ensure_database()
        with psycopg.connect(url(), connect_timeout=3):
            return None
    except psycopg.Error as exc:
        from conveyor._redact import text

        return text(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc))


def ensure_database() -> None:
    import psycopg

    name = psycopg.conninfo.conninfo_to_dict(url()).get("dbname")
    admin = psycopg.conninfo.make_conninfo(url(), dbname="postgres")
    with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            return
        conn.execute(f'CREATE DATABASE "{name}"')


def server_version() -> str | None:
    import psycopg

    try:
        with psycopg.connect(url(), connect_timeout=3) as conn:
            return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
    except psycopg.Error:
        return None


def empty_schema(schema: str, install: Callable[[], None]) -> None:
    """Drop ``schema`` and ``install`` it afresh: empty tables with no statistics.

    Truncating would keep the statistics of an earlier phase (an ANALYZE
    that saw the table empty), and with autovacuum off nothing would replace
    them: plans made from them read whole tables once they fill.
    """
    import psycopg

    with psycopg.connect(url(), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{schema}"')
    install()


def analyze(schema: str) -> None:
    """``ANALYZE`` the schema's tables that hold rows, as autovacuum would once they grew.

    The project's server runs with autovacuum off, so after a bulk insert the
    planner would plan each system's dequeue query for a table it has never
    seen filled; every PostgreSQL system gets this after its preload.  Empty
    tables (results, logs, events) are left unanalyzed: statistics saying
    "empty" would keep plans that scan them whole while the run fills them,
    which autovacuum's analyze would not leave in place.
    """
    import psycopg

    with psycopg.connect(url(), autocommit=True) as conn:
        tables = [t for (t,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()]
        for table in tables:
            name = f'"{schema}"."{table}"'
            if conn.execute(f"SELECT EXISTS (SELECT 1 FROM {name})").fetchone()[0]:
                conn.execute(f"ANALYZE {name}")
