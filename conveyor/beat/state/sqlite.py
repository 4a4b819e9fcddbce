"""Beat's run history in the SQLite broker's file.

Component ``beat`` in ``conveyor_schema``; what each record means is in
``base.py``::

    conveyor_beat_runs   one row per entry that ever ran
      name             TEXT PRIMARY KEY   the entry's name
      last_run_us      INTEGER            the tick it last ran for
      total_run_count  INTEGER            how many ticks it ran for
    conveyor_beat_meta   (key TEXT PRIMARY KEY, value_us INTEGER)
      alive_at         the end of the last pass a leader completed
      cutoff           ticks at or before it were due while no beat ran
    conveyor_beat_notes  (key TEXT PRIMARY KEY, value TEXT)
      scheduler        import path of the scheduler the last leader ran, so the
                       monitor shows that one, however beat was started

Each write is one upsert whose ``WHERE`` refuses an older time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor.beat.state.base import BeatState, EntryRuns, from_micros, to_micros

__all__ = ["SQLiteBeatState"]

_SQLITE_SCHEMA_VERSION = 1
_SQLITE_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS conveyor_beat_runs (
        name TEXT PRIMARY KEY,
        last_run_us INTEGER NOT NULL,
        total_run_count INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS conveyor_beat_meta (
        key TEXT PRIMARY KEY,
        value_us INTEGER NOT NULL)""",
    # Added without a version bump: creating it is all an older file needs.
    """CREATE TABLE IF NOT EXISTS conveyor_beat_notes (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
)
_SQLITE_RUNS = "SELECT name, last_run_us, total_run_count FROM conveyor_beat_runs"
_SQLITE_RUN = _SQLITE_RUNS + " WHERE name = ?"
# The WHERE on the upsert is what keeps history from moving backwards.
_SQLITE_RECORD = """
    INSERT INTO conveyor_beat_runs (name, last_run_us, total_run_count) VALUES (?, ?, 1)
    ON CONFLICT (name) DO UPDATE SET last_run_us = excluded.last_run_us,
                                     total_run_count = conveyor_beat_runs.total_run_count + 1
    WHERE excluded.last_run_us > conveyor_beat_runs.last_run_us"""
_SQLITE_GET_META = "SELECT value_us FROM conveyor_beat_meta WHERE key = ?"
_SQLITE_RAISE_META = """
    INSERT INTO conveyor_beat_meta (key, value_us) VALUES (?, ?)
    ON CONFLICT (key) DO UPDATE SET value_us = excluded.value_us
    WHERE excluded.value_us > conveyor_beat_meta.value_us"""
_SQLITE_GET_NOTE = "SELECT value FROM conveyor_beat_notes WHERE key = ?"
_SQLITE_SET_NOTE = "INSERT OR REPLACE INTO conveyor_beat_notes (key, value) VALUES (?, ?)"


class SQLiteBeatState(BeatState):
    """Two small tables in the broker's SQLite file (see the module docstring)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        from conveyor._sqlite import Database, parse_sqlite_url

        # Only the options that say how to open the file; the broker's own
        # (such as its poll interval) mean nothing here.
        opened = {k: v for k, v in (options or {}).items() if k in ("synchronous", "busy_timeout")}
        self._db = Database(parse_sqlite_url(url, **opened), "beat", _SQLITE_SCHEMA,
                            _SQLITE_SCHEMA_VERSION)

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        if names is not None and len(names) == 1:
            rows = self._db.query(lambda c: c.execute(_SQLITE_RUN, (names[0],)).fetchall())
        else:
            rows = self._db.query(lambda c: c.execute(_SQLITE_RUNS).fetchall())
        wanted = None if names is None else set(names)
        return {
            str(name): EntryRuns(from_micros(us), int(count))
            for name, us, count in rows
            if wanted is None or name in wanted
        }

    def record_run(self, name: str, run_at: datetime) -> bool:
        params = (name, to_micros(run_at))
        return bool(self._db.write(lambda c: c.execute(_SQLITE_RECORD, params).rowcount == 1))

    def _get_meta(self, key: str) -> int | None:
        row = self._db.query(lambda c: c.execute(_SQLITE_GET_META, (key,)).fetchone())
        return None if row is None else int(row[0])

    def _raise_meta(self, key: str, micros: int) -> None:
        self._db.write(lambda c: c.execute(_SQLITE_RAISE_META, (key, micros)))

    def note(self, key: str) -> str | None:
        row = self._db.query(lambda c: c.execute(_SQLITE_GET_NOTE, (key,)).fetchone())
        return None if row is None else str(row[0])

    def set_note(self, key: str, value: str) -> None:
        self._db.write(lambda c: c.execute(_SQLITE_SET_NOTE, (key, value)))

    def close(self) -> None:
        self._db.close()

