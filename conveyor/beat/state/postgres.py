"""Beat's run history in the PostgreSQL broker's database and schema.

The same three small tables as the SQLite history (``base.py`` explains
what each record means and why every write only moves a time forward),
created and versioned as component ``beat`` in ``conveyor_schema``::

    conveyor_beat_runs   (name text PRIMARY KEY, last_run_us bigint, total_run_count bigint)
    conveyor_beat_meta   (key text PRIMARY KEY, value_us bigint)      alive_at, cutoff
    conveyor_beat_notes  (key text PRIMARY KEY, value text)           scheduler

Each write is one upsert whose ``WHERE`` refuses an older time, so a paused
leader that resumes late cannot roll history back.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor._postgres import Pool, ensure_schema, parse_postgres_url, quoted
from conveyor.beat.state.base import BeatState, EntryRuns, from_micros, to_micros

__all__ = ["PostgresBeatState"]

SCHEMA_VERSION = 1
MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    """CREATE TABLE {schema}.conveyor_beat_runs (
        name text PRIMARY KEY,
        last_run_us bigint NOT NULL,
        total_run_count bigint NOT NULL DEFAULT 0)""",
    """CREATE TABLE {schema}.conveyor_beat_meta (
        key text PRIMARY KEY,
        value_us bigint NOT NULL)""",
    """CREATE TABLE {schema}.conveyor_beat_notes (
        key text PRIMARY KEY,
        value text NOT NULL)""",
),)
RUNS = "SELECT name, last_run_us, total_run_count FROM {s}.conveyor_beat_runs"
RUNS_NAMED = RUNS + " WHERE name = ANY(%s)"
RECORD = """
    INSERT INTO {s}.conveyor_beat_runs AS r (name, last_run_us, total_run_count)
    VALUES (%s, %s, 1)
    ON CONFLICT (name) DO UPDATE SET last_run_us = excluded.last_run_us,
                                     total_run_count = r.total_run_count + 1
    WHERE excluded.last_run_us > r.last_run_us"""
GET_META = "SELECT value_us FROM {s}.conveyor_beat_meta WHERE key = %s"
RAISE_META = """
    INSERT INTO {s}.conveyor_beat_meta AS m (key, value_us) VALUES (%s, %s)
    ON CONFLICT (key) DO UPDATE SET value_us = excluded.value_us
    WHERE excluded.value_us > m.value_us"""
GET_NOTE = "SELECT value FROM {s}.conveyor_beat_notes WHERE key = %s"
SET_NOTE = """
    INSERT INTO {s}.conveyor_beat_notes (key, value) VALUES (%s, %s)
    ON CONFLICT (key) DO UPDATE SET value = excluded.value"""


class PostgresBeatState(BeatState):
    """Three small tables beside the PostgreSQL broker's (see the module docstring)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        # Only where the tables live; the broker's other options mean nothing here.
        parsed = parse_postgres_url(url, (options or {}).get("schema"))
        self._pool = Pool(parsed, size=2)
        self._schema = quoted(parsed.schema)
        ensure_schema(self._pool, "beat", SCHEMA_VERSION, MIGRATIONS)

    def _one(self, action: str, template: str, params: tuple[Any, ...]) -> Any:
        sql = template.replace("{s}", self._schema)
        return self._pool.run(action, lambda c: c.execute(sql, params).fetchone())

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        sql = (RUNS if names is None else RUNS_NAMED).replace("{s}", self._schema)
        params = () if names is None else (list(names),)
        rows = self._pool.run("read beat history", lambda c: c.execute(sql, params).fetchall())
        return {str(name): EntryRuns(from_micros(us), int(count)) for name, us, count in rows}

    def record_run(self, name: str, run_at: datetime) -> bool:
        sql = RECORD.replace("{s}", self._schema)
        params = (name, to_micros(run_at))
        return bool(self._pool.run("record a beat run",
                                   lambda c: c.execute(sql, params).rowcount == 1))

    def _get_meta(self, key: str) -> int | None:
        row = self._one("read beat state", GET_META, (key,))
        return None if row is None else int(row[0])

    def _raise_meta(self, key: str, micros: int) -> None:
        self._one_write(RAISE_META, (key, micros))

    def note(self, key: str) -> str | None:
        row = self._one("read a beat note", GET_NOTE, (key,))
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        self._one_write(SET_NOTE, (key, value))

    def _one_write(self, template: str, params: tuple[Any, ...]) -> None:
        sql = template.replace("{s}", self._schema)
        self._pool.run("write beat state", lambda c: c.execute(sql, params))

    def close(self) -> None:
        self._pool.close()
