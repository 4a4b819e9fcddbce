"""SQLite event store: tables beside the broker's, in the same database file.

It opens its own connections (stdlib ``sqlite3``, one per thread and
process, WAL, ``BEGIN IMMEDIATE`` for writes) and touches only tables
prefixed ``conveyor_events_``::

    conveyor_events_workers   id PK, info JSON, heartbeat_at, ttl, offline_at
    conveyor_events_counts    (minute, task, metric) PK -> value     WITHOUT ROWID
                              metric: n:<STATE> | rt:<bucket> | rt:sum | qw:<bucket> | qw:sum
                              minute 0: all-time totals, never pruned
    conveyor_events_counts10  the same, summed per 10 minutes (what the day view reads)
    conveyor_events_tasks     task_id PK, name, state, queue, worker, retries,
                              sent_at, started_at, done_at, runtime, wait, info,
                              updated_at (indexed)
    conveyor_events_timeline  task_id, ts, kind, detail, worker  (index task_id, ts)
    conveyor_events_queues    (minute, queue) PK -> ready, delayed, inflight, dead
    conveyor_events_claims    name PK -> until   (who samples queue depths this minute)

A worker writes one transaction per heartbeat.  Retention and the caps
(``MAX_TASKS`` index rows, ``MAX_TIMELINE`` events per task) are applied by
:meth:`SQLiteEventStore.prune`, which each process runs at most once a
minute after a write.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

from conveyor.eventstores import dumps, worker_view
from conveyor.eventstores.base import (
    MAX_TASKS,
    MAX_TIMELINE,
    OUTCOMES,
    WORKER_DROP_AFTER,
    Batch,
    EventStore,
    QueueSample,
    TaskEntry,
    TaskPage,
    TaskQuery,
    TimelineEvent,
)
from conveyor.exceptions import BrokerError, ConfigurationError

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS conveyor_events_workers (
    id TEXT PRIMARY KEY, info TEXT NOT NULL, heartbeat_at REAL NOT NULL,
    ttl REAL NOT NULL, offline_at REAL);
CREATE TABLE IF NOT EXISTS conveyor_events_counts (
    minute INTEGER NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (minute, task, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_events_counts10 (
    minute INTEGER NOT NULL, task TEXT NOT NULL, metric TEXT NOT NULL, value REAL NOT NULL,
    PRIMARY KEY (minute, task, metric)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_events_tasks (
    task_id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, queue TEXT,
    worker TEXT, retries INTEGER NOT NULL DEFAULT 0, sent_at REAL, started_at REAL,
    done_at REAL, runtime REAL, wait REAL, info TEXT, updated_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS conveyor_events_tasks_updated
    ON conveyor_events_tasks (updated_at);
CREATE TABLE IF NOT EXISTS conveyor_events_timeline (
    task_id TEXT NOT NULL, ts REAL NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
    worker TEXT);
CREATE INDEX IF NOT EXISTS conveyor_events_timeline_task
    ON conveyor_events_timeline (task_id, ts);
CREATE TABLE IF NOT EXISTS conveyor_events_queues (
    minute INTEGER NOT NULL, queue TEXT NOT NULL, ready INTEGER NOT NULL,
    delayed INTEGER NOT NULL, inflight INTEGER NOT NULL, dead INTEGER NOT NULL,
    PRIMARY KEY (minute, queue)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS conveyor_events_claims (name TEXT PRIMARY KEY, until REAL NOT NULL);
"""

_TASK_COLUMNS = ("task_id", "name", "state", "queue", "worker", "retries", "sent_at",
                 "started_at", "done_at", "runtime", "wait", "info", "updated_at")
_OUTCOME_LIST = ", ".join(f"'{s}'" for s in OUTCOMES)
# Newest wins; a STARTED arriving late never hides the outcome of the same attempt.
UPSERT_TASK = f"""
INSERT INTO conveyor_events_tasks ({", ".join(_TASK_COLUMNS)})
VALUES ({", ".join("?" for _ in _TASK_COLUMNS)})
ON CONFLICT (task_id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in _TASK_COLUMNS[1:])}
WHERE excluded.updated_at >= conveyor_events_tasks.updated_at
  AND NOT (excluded.state = 'STARTED'
           AND conveyor_events_tasks.state IN ({_OUTCOME_LIST})
           AND conveyor_events_tasks.retries >= excluded.retries)
"""
ROLLUP = 600
ADD_CELL = """
INSERT INTO conveyor_events_counts (minute, task, metric, value) VALUES (?, ?, ?, ?)
ON CONFLICT (minute, task, metric) DO UPDATE SET value = value + excluded.value
"""
ADD_ROLLUP = ADD_CELL.replace("conveyor_events_counts", "conveyor_events_counts10")
TRIM_TASKS = """
DELETE FROM conveyor_events_tasks WHERE task_id IN (
    SELECT task_id FROM conveyor_events_tasks ORDER BY updated_at DESC LIMIT -1 OFFSET ?)
"""
# Orphans: events of tasks no longer indexed.  Monitor actions on tasks that never
# reached a worker (revoked while queued, say) are kept an hour.
TRIM_ORPHANS = """
DELETE FROM conveyor_events_timeline
WHERE (kind != 'ACTION' OR ts < ?)
  AND task_id NOT IN (SELECT task_id FROM conveyor_events_tasks)
"""
TRIM_TIMELINES = f"""
DELETE FROM conveyor_events_timeline WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid, ROW_NUMBER() OVER (PARTITION BY task_id ORDER BY ts DESC) AS n
        FROM conveyor_events_timeline) WHERE n > {MAX_TIMELINE})
"""


def sqlite_path(url: str) -> str:
    """``sqlite:///rel.db`` (relative to the working directory) or ``sqlite:////abs.db``."""
    path = urlsplit(url).path[1:]
    if not path or path == ":memory:":
        raise ConfigurationError(f"{url!r}: events need a database file (sqlite:///path.db)")
    return os.path.abspath(path)


class _Local(threading.local):
    conn: sqlite3.Connection | None = None
    pid: int = 0


class SQLiteEventStore(EventStore):
    """See module docstring."""

    def __init__(self, url: str, retention: float = 86400.0, max_tasks: int = MAX_TASKS,
                 busy_timeout: float = 10.0,
                 options: Mapping[str, Any] | None = None) -> None:
        # ``options`` are a Redis client's (see EVENT_STORES); there is no client here.
        self.url = url
        self.retention = retention
        self.max_tasks = max_tasks
        self.path = sqlite_path(url)
        self.busy_timeout = busy_timeout
        self._local = _Local()
        self._pruned_at = 0.0

    # -- connections -----------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if local.conn is None or local.pid != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._run(lambda: conn.executescript(SCHEMA))
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def _run(self, attempt: Callable[[], T]) -> T:
        for tries in range(5):
            try:
                return attempt()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise BrokerError(f"event store {self.path}: {exc}") from exc
                if tries == 4:
                    raise BrokerError(f"event store {self.path}: {exc}") from exc
                time.sleep(0.05 * (tries + 1))
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return self._run(attempt)

    def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        conn = self._conn()
        return self._run(lambda: conn.execute(sql, params).fetchall())

    def close(self) -> None:
        if self._local.conn is not None and self._local.pid == os.getpid():
            self._local.conn.close()
        self._local.conn = None

    # -- writes ----------------------------------------------------------------
    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        beat = float(info.get("heartbeat_at") or time.time())
        self._write(lambda c: c.execute(
            "INSERT OR REPLACE INTO conveyor_events_workers (id, info, heartbeat_at, ttl) "
            "VALUES (?, ?, ?, ?)", (str(info["id"]), dumps(info), beat, ttl)))

    def worker_offline(self, worker_id: str) -> None:
        self._write(lambda c: c.execute(
            "UPDATE conveyor_events_workers SET offline_at = ? WHERE id = ?",
            (time.time(), worker_id)))

    def write(self, batch: Batch) -> None:
        if not batch:
            return

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(ADD_CELL, [(*k, v) for k, v in batch.cells.items()])
            conn.executemany(ADD_ROLLUP, _rollups(batch.cells))
            conn.executemany(UPSERT_TASK, [_task_row(e) for e in batch.tasks])
            conn.executemany(
                "INSERT INTO conveyor_events_timeline (task_id, ts, kind, detail, worker) "
                "VALUES (?, ?, ?, ?, ?)",
                [(e.task_id, e.ts, e.kind, e.detail, e.worker) for e in batch.timeline])

        self._write(work)
        self.prune()

    def claim(self, name: str, ttl: float) -> bool:
        now = time.time()

        def work(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO conveyor_events_claims (name, until) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET until = excluded.until "
                "WHERE conveyor_events_claims.until <= ?", (name, now + ttl, now))
            return cur.rowcount > 0

        return self._write(work)

    def release(self, name: str) -> None:
        self._write(lambda c: c.execute("DELETE FROM conveyor_events_claims WHERE name = ?",
                                        (name,)))

    def write_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        rows = [(s.minute, s.queue, s.ready, s.delayed, s.inflight, s.dead) for s in samples]
        self._write(lambda c: c.executemany(
            "INSERT OR REPLACE INTO conveyor_events_queues "
            "(minute, queue, ready, delayed, inflight, dead) VALUES (?, ?, ?, ?, ?, ?)", rows))

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        cutoff = now - self.retention

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM conveyor_events_counts WHERE minute < ? AND minute > 0",
                         (cutoff - 60,))
            conn.execute("DELETE FROM conveyor_events_counts10 WHERE minute < ?",
                         (cutoff - ROLLUP,))
            conn.execute("DELETE FROM conveyor_events_queues WHERE minute < ?", (cutoff - 60,))
            conn.execute("DELETE FROM conveyor_events_tasks WHERE updated_at < ?", (cutoff,))
            conn.execute(TRIM_TASKS, (self.max_tasks,))
            conn.execute("DELETE FROM conveyor_events_timeline WHERE ts < ?", (cutoff,))
            conn.execute(TRIM_ORPHANS, (now - 3600,))
            conn.execute(TRIM_TIMELINES)
            conn.execute("DELETE FROM conveyor_events_claims WHERE until < ?", (now,))
            conn.execute("DELETE FROM conveyor_events_workers WHERE heartbeat_at < ?",
                         (now - WORKER_DROP_AFTER,))

        self._write(work)

    # -- reads -----------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = self._read(
            "SELECT info, ttl, offline_at FROM conveyor_events_workers WHERE heartbeat_at >= ? "
            "ORDER BY id", (now - WORKER_DROP_AFTER,))
        out = []
        for info, ttl, offline_at in rows:
            doc = json.loads(info)
            doc["ttl"] = ttl
            if offline_at is not None:
                doc["offline_at"] = offline_at
            out.append(worker_view(doc, now))
        return out

    def cells(self, since: float, until: float, step: int) -> list[tuple[int, str, str, float]]:
        table, width = "conveyor_events_counts", 60
        if step % ROLLUP == 0 and since > 0:
            table, width = "conveyor_events_counts10", ROLLUP
        rows = self._read(
            f"SELECT (minute / ?) * ?, task, metric, SUM(value) FROM {table} "
            "WHERE minute >= ? AND minute <= ? GROUP BY 1, 2, 3 ORDER BY 1",
            (step, step, int(since // width) * width, until))
        return [(int(t), task, metric, float(v)) for t, task, metric, v in rows]

    def tasks(self, query: TaskQuery) -> list[TaskEntry]:
        return self.search(query).entries

    def search(self, query: TaskQuery) -> TaskPage:
        where, params = _task_filter(query)
        columns = ", ".join(_TASK_COLUMNS)
        if query.scan is None or query.task_id:
            rows = self._read(f"SELECT {columns} FROM conveyor_events_tasks {where} "
                              "ORDER BY updated_at DESC LIMIT ?", (*params, query.limit))
            return TaskPage([TaskEntry(*row) for row in rows])
        # The newest ``scan`` rows in the time range (by the updated_at index), filtered.
        span, span_params = _task_filter(TaskQuery(since=query.since, until=query.until))
        recent = (f"SELECT * FROM conveyor_events_tasks {span} "
                  "ORDER BY updated_at DESC LIMIT ?")
        rows = self._read(f"SELECT {columns} FROM ({recent}) {where} "
                          "ORDER BY updated_at DESC LIMIT ?",
                          (*span_params, query.scan, *params, query.limit))
        found = [TaskEntry(*row) for row in rows]
        if len(found) >= query.limit:
            return TaskPage(found)
        # The oldest row looked at, and whether any row lies beyond it.
        edge = self._read(f"SELECT updated_at FROM conveyor_events_tasks {span} "
                          "ORDER BY updated_at DESC LIMIT 2 OFFSET ?",
                          (*span_params, max(0, query.scan - 1)))
        return TaskPage(found, complete=len(edge) < 2, oldest=edge[0][0] if edge else None)

    def timeline(self, task_id: str) -> list[TimelineEvent]:
        rows = self._read(
            "SELECT task_id, ts, kind, detail, worker FROM conveyor_events_timeline "
            "WHERE task_id = ? ORDER BY ts, rowid", (task_id,))
        return [TimelineEvent(*row) for row in rows]

    def queue_samples(self, since: float, until: float) -> list[QueueSample]:
        rows = self._read(
            "SELECT minute, queue, ready, delayed, inflight, dead FROM conveyor_events_queues "
            "WHERE minute >= ? AND minute <= ? ORDER BY minute, queue", (since, until))
        return [QueueSample(*row) for row in rows]


def _rollups(cells: dict[tuple[int, str, str], float]) -> list[tuple[int, str, str, float]]:
    """Minute cells summed per 10 minutes (the all-time totals are not rolled up)."""
    out: dict[tuple[int, str, str], float] = {}
    for (minute, task, metric), value in cells.items():
        if minute > 0:
            key = (minute // ROLLUP * ROLLUP, task, metric)
            out[key] = out.get(key, 0) + value
    return [(*key, value) for key, value in out.items()]


def _task_row(entry: TaskEntry) -> tuple[Any, ...]:
    return tuple(getattr(entry, column) for column in _TASK_COLUMNS)


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _task_filter(query: TaskQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    pairs: list[tuple[str, Any]] = [
        ("task_id LIKE ? || '%' ESCAPE '\\'", query.task_id and _like(query.task_id)),
        ("name LIKE '%' || ? || '%' ESCAPE '\\'", query.name and _like(query.name)),
        ("state = ?", query.state),
        ("queue = ?", query.queue),
        ("updated_at >= ?", query.since),
        ("updated_at <= ?", query.until),
    ]
    for clause, value in pairs:
        if value is not None and value != "":
            clauses.append(clause)
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
