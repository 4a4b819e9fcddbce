"""PostgreSQL event store: tables beside the broker's and the results', in one database.

Connections, URLs (``?schema=``), errors and schema versions are shared with
the other PostgreSQL stores, see ``conveyor/_postgres.py``.  Like the result
store, it lives in its URL's schema (the result backend's, or the broker's
when results go to Django's database).

Schema (component ``events``, version 1; every table prefixed
``conveyor_events_`` like SQLite's, in the URL's schema)::

    conveyor_events_workers   id PK, info JSON text, heartbeat_at, ttl, offline_at
                              one row per worker process, rewritten each heartbeat;
                              fillfactor 50: no indexed column changes, so the
                              rewrite is a HOT update in the same page
    conveyor_events_counts    (minute, task, metric) PK -> value
                              metric: n:<STATE> | rt:<bucket> | rt:sum | qw:<bucket> | qw:sum
                              minute 0: all-time totals, never pruned; the key is
                              what a range of minutes is read by; fillfactor 70:
                              each heartbeat adds to the same cells (HOT updates)
    conveyor_events_counts10  the same, summed per 10 minutes (what the day view reads)
    conveyor_events_tasks     task_id PK (COLLATE "C": a prefix search is an index
                              range), name, state, queue, worker, retries, sent_at,
                              started_at, done_at, runtime, wait, info, updated_at
                              index (updated_at): the monitor's newest-first pages,
                              its bounded scans and the trim to MAX_TASKS
    conveyor_events_timeline  n bigserial PK (arrival order among equal times),
                              task_id, ts, kind, detail, worker
                              index (task_id, ts): one task's events, and the
                              orphan check when index entries go
    conveyor_events_queues    (minute, queue) PK -> ready, delayed, inflight, dead
    conveyor_events_claims    name PK -> until   (who samples queue depths this minute)

A worker's batch is one statement (data-modifying CTEs over ``unnest``ed
arrays: counters, 10-minute roll-ups, index upserts, timeline rows), so it
costs one round trip and commits or fails as a whole; a batch refused for a
lost connection or a deadlock (BrokerUnavailable) stays with the worker for
its next heartbeat.  Rows are sent sorted by key, so two
workers adding to the same cells lock them in the same order instead of
deadlocking.  The index entry upsert keeps the newest update, and a late
STARTED never hides the outcome of the same attempt (as SQLite's).

Every read is bounded: the task index holds at most ``MAX_TASKS`` rows (plus
what arrives before the next prune) and reads take a ``LIMIT``; a timeline
read returns a task's newest ``MAX_TIMELINE`` events; counters and samples
are read by a range of their key.  Retention and the caps are applied by
:meth:`PostgresEventStore.prune`, which each process runs at most once a
minute after a write, and only one process at a time (a transaction-scoped
advisory lock, tried, never waited for).

Churn: every task rewrites its index row and adds timeline rows that the
prune deletes again, so the tables stay small (about 10 MiB for the index
and timelines, docs/monitoring.md) only while autovacuum reclaims dead rows,
as it does by default; with it off they grow with every task.

Text a hostile message may carry and PostgreSQL's ``text`` cannot (NUL, lone
surrogates) is written escaped (``\\x00``, ``\\udXXX``), so one such task
cannot make every later batch of its worker fail.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from conveyor._postgres import Pool, ensure_schema, parse_postgres_url, quoted
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
    newer,
)
from conveyor.exceptions import BrokerError

T = TypeVar("T")
log = logging.getLogger("conveyor.events")
_Conn = Any  # psycopg.Connection[Any]; psycopg is an optional dependency
ROLLUP = 600

SCHEMA_VERSION = 1
MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    """CREATE TABLE {schema}.conveyor_events_workers (
        id text PRIMARY KEY,
        info text NOT NULL,
        heartbeat_at float8 NOT NULL,
        ttl float8 NOT NULL,
        offline_at float8) WITH (fillfactor = 50)""",
    """CREATE TABLE {schema}.conveyor_events_counts (
        minute bigint NOT NULL,
        task text NOT NULL,
        metric text NOT NULL,
        value float8 NOT NULL,
        PRIMARY KEY (minute, task, metric)) WITH (fillfactor = 70)""",
    """CREATE TABLE {schema}.conveyor_events_counts10 (
        minute bigint NOT NULL,
        task text NOT NULL,
        metric text NOT NULL,
        value float8 NOT NULL,
        PRIMARY KEY (minute, task, metric)) WITH (fillfactor = 70)""",
    """CREATE TABLE {schema}.conveyor_events_tasks (
        task_id text COLLATE "C" PRIMARY KEY,
        name text NOT NULL,
        state text NOT NULL,
        queue text,
        worker text,
        retries integer NOT NULL DEFAULT 0,
        sent_at float8,
        started_at float8,
        done_at float8,
        runtime float8,
        wait float8,
        info text,
        updated_at float8 NOT NULL)""",
    """CREATE INDEX conveyor_events_tasks_updated
        ON {schema}.conveyor_events_tasks (updated_at)""",
    """CREATE TABLE {schema}.conveyor_events_timeline (
        n bigserial PRIMARY KEY,
        task_id text NOT NULL,
        ts float8 NOT NULL,
        kind text NOT NULL,
        detail text NOT NULL,
        worker text)""",
    """CREATE INDEX conveyor_events_timeline_task
        ON {schema}.conveyor_events_timeline (task_id, ts)""",
    """CREATE TABLE {schema}.conveyor_events_queues (
        minute bigint NOT NULL,
        queue text NOT NULL,
        ready bigint NOT NULL,
        delayed bigint NOT NULL,
        inflight bigint NOT NULL,
        dead bigint NOT NULL,
        PRIMARY KEY (minute, queue))""",
    """CREATE TABLE {schema}.conveyor_events_claims (
        name text PRIMARY KEY,
        until float8 NOT NULL)""",
),)

_TASK_COLUMNS = ("task_id", "name", "state", "queue", "worker", "retries", "sent_at",
                 "started_at", "done_at", "runtime", "wait", "info", "updated_at")
_TASK_TYPES = ("text", "text", "text", "text", "text", "int4", "float8", "float8", "float8",
               "float8", "float8", "text", "float8")
_COLUMNS = ", ".join(_TASK_COLUMNS)
_OUTCOME_LIST = ", ".join(f"'{s}'" for s in OUTCOMES)
_TASK_ARRAYS = ", ".join(f"%(t_{c})b::{t}[]" for c, t in zip(_TASK_COLUMNS, _TASK_TYPES,
                                                               strict=True))


def _add_cells(table: str, key: str) -> str:
    return f"""
    INSERT INTO {{s}}.{table} AS c (minute, task, metric, value)
    SELECT * FROM unnest(%({key}_m)b::int8[], %({key}_t)b::text[], %({key}_k)b::text[],
                         %({key}_v)b::float8[])
    ON CONFLICT (minute, task, metric) DO UPDATE SET value = c.value + excluded.value
    RETURNING 1"""


# One statement per batch (see the module docstring); the CTEs run even unread.
# Its arrays go in binary (``%(name)b``): a quarter less time than as text at 1,000 tasks.
WRITE = f"""
WITH counts AS ({_add_cells("conveyor_events_counts", "c")}),
rollups AS ({_add_cells("conveyor_events_counts10", "r")}),
tasks AS (
    INSERT INTO {{s}}.conveyor_events_tasks AS old ({_COLUMNS})
    SELECT * FROM unnest({_TASK_ARRAYS})
    ON CONFLICT (task_id) DO UPDATE SET
        {", ".join(f"{c} = excluded.{c}" for c in _TASK_COLUMNS[1:])}
    WHERE excluded.updated_at >= old.updated_at
      AND NOT (excluded.state = 'STARTED'
               AND old.state IN ({_OUTCOME_LIST})
               AND old.retries >= excluded.retries)
    RETURNING 1),
timeline AS (
    INSERT INTO {{s}}.conveyor_events_timeline (task_id, ts, kind, detail, worker)
    SELECT * FROM unnest(%(e_task)b::text[], %(e_ts)b::float8[], %(e_kind)b::text[],
                         %(e_detail)b::text[], %(e_worker)b::text[])
    RETURNING 1)
SELECT (SELECT count(*) FROM counts), (SELECT count(*) FROM rollups),
       (SELECT count(*) FROM tasks), (SELECT count(*) FROM timeline)"""
HEARTBEAT = """
INSERT INTO {s}.conveyor_events_workers (id, info, heartbeat_at, ttl) VALUES (%s, %s, %s, %s)
ON CONFLICT (id) DO UPDATE SET info = excluded.info, heartbeat_at = excluded.heartbeat_at,
    ttl = excluded.ttl, offline_at = NULL"""
OFFLINE = "UPDATE {s}.conveyor_events_workers SET offline_at = %s WHERE id = %s"
CLAIM = """
INSERT INTO {s}.conveyor_events_claims AS c (name, until) VALUES (%s, %s)
ON CONFLICT (name) DO UPDATE SET until = excluded.until WHERE c.until <= %s"""
RELEASE = "DELETE FROM {s}.conveyor_events_claims WHERE name = %s"
SAMPLES = """
INSERT INTO {s}.conveyor_events_queues (minute, queue, ready, delayed, inflight, dead)
SELECT * FROM unnest(%s::int8[], %s::text[], %s::int8[], %s::int8[], %s::int8[], %s::int8[])
ON CONFLICT (minute, queue) DO UPDATE SET ready = excluded.ready,
    delayed = excluded.delayed, inflight = excluded.inflight, dead = excluded.dead"""
WORKERS = """
SELECT info, ttl, offline_at FROM {s}.conveyor_events_workers WHERE heartbeat_at >= %s
ORDER BY id"""
CELLS = """
SELECT (minute / %(step)s) * %(step)s, task, metric, sum(value) FROM {s}.{table}
WHERE minute >= %(since)s AND minute <= %(until)s GROUP BY 1, 2, 3 ORDER BY 1"""
TIMELINE = f"""
SELECT task_id, ts, kind, detail, worker FROM (
    SELECT n, task_id, ts, kind, detail, worker FROM {{s}}.conveyor_events_timeline
    WHERE task_id = %s ORDER BY ts DESC, n DESC LIMIT {MAX_TIMELINE}) newest
ORDER BY ts, n"""
QUEUE_SAMPLES = """
SELECT minute, queue, ready, delayed, inflight, dead FROM {s}.conveyor_events_queues
WHERE minute >= %s AND minute <= %s ORDER BY minute, queue"""
PRUNE_LOCK = "SELECT pg_try_advisory_xact_lock(hashtext(%s))"
# Orphans: events of tasks no longer indexed.  Monitor actions on tasks that never
# reached a worker (revoked while queued, say) are kept an hour.
PRUNE = (
    ("DELETE FROM {s}.conveyor_events_counts WHERE minute < %(cells)s AND minute > 0"),
    ("DELETE FROM {s}.conveyor_events_counts10 WHERE minute < %(rollups)s"),
    ("DELETE FROM {s}.conveyor_events_queues WHERE minute < %(cells)s"),
    ("DELETE FROM {s}.conveyor_events_tasks WHERE updated_at < %(cutoff)s"),
    ("""DELETE FROM {s}.conveyor_events_tasks WHERE task_id IN (
        SELECT task_id FROM {s}.conveyor_events_tasks
        ORDER BY updated_at DESC OFFSET %(max_tasks)s)"""),
    ("DELETE FROM {s}.conveyor_events_timeline WHERE ts < %(cutoff)s"),
    ("""DELETE FROM {s}.conveyor_events_timeline t
        WHERE (t.kind <> 'ACTION' OR t.ts < %(hour_ago)s)
          AND NOT EXISTS (SELECT 1 FROM {s}.conveyor_events_tasks i
                          WHERE i.task_id = t.task_id)"""),
    (f"""DELETE FROM {{s}}.conveyor_events_timeline WHERE n IN (
        SELECT n FROM (
            SELECT n, row_number() OVER (PARTITION BY task_id ORDER BY ts DESC, n DESC) AS r
            FROM {{s}}.conveyor_events_timeline WHERE task_id IN (
                SELECT task_id FROM {{s}}.conveyor_events_timeline
                GROUP BY task_id HAVING count(*) > {MAX_TIMELINE})) ranked
        WHERE r > {MAX_TIMELINE})"""),
    ("DELETE FROM {s}.conveyor_events_claims WHERE until < %(now)s"),
    ("DELETE FROM {s}.conveyor_events_workers WHERE heartbeat_at < %(workers)s"),
)
RETRIED = frozenset({"read events", "record a heartbeat", "record a worker going offline",
                     "store queue samples", "release a claim"})


class PostgresEventStore(EventStore):
    """See module docstring."""

    def __init__(self, url: str, retention: float = 86400.0,
                 options: Mapping[str, Any] | None = None, max_tasks: int = MAX_TASKS) -> None:
        # ``options`` are a Redis client's (see EVENT_STORES); there is no client here.
        self.url = url
        self.retention = retention
        self.max_tasks = max_tasks
        parsed = parse_postgres_url(url)
        self._pool = Pool(parsed)
        self._schema = quoted(parsed.schema)
        self._prune_key = f"conveyor_events_prune.{parsed.schema}"
        self._pruned_at = 0.0
        self._schema_ready = False

    def _sql(self, template: str, **names: str) -> str:
        return template.replace("{s}", self._schema).format(**names) if names else (
            template.replace("{s}", self._schema))

    def _run(self, action: str, work: Callable[[_Conn], T], transaction: bool = False) -> T:
        """``work`` on a pooled connection.  A deadlock or serialization failure is an
        ``OperationalError`` to psycopg, so it arrives as BrokerUnavailable like a lost
        connection: a worker keeps its batch for the next heartbeat.

        The tables are made on first use, not when the store is opened: a worker
        builds its event sink before it waits for the database to be up."""
        if not self._schema_ready:
            ensure_schema(self._pool, "events", SCHEMA_VERSION, MIGRATIONS)
            self._schema_ready = True  # a second thread doing it too is harmless
        return self._pool.run(action, work, transaction, retry=action in RETRIED)

    def _read(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        return self._run("read events", lambda c: list(c.execute(sql, params).fetchall()))

    def close(self) -> None:
        self._pool.close()

    # -- writes ----------------------------------------------------------------
    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        beat = float(info.get("heartbeat_at") or time.time())
        row = (_text(str(info["id"])), _text(dumps(info)), beat, float(ttl))
        self._run("record a heartbeat", lambda c: c.execute(self._sql(HEARTBEAT), row))

    def worker_offline(self, worker_id: str) -> None:
        row = (time.time(), _text(worker_id))
        self._run("record a worker going offline", lambda c: c.execute(self._sql(OFFLINE), row))

    def write(self, batch: Batch) -> None:
        if not batch:
            return
        params = _batch_params(batch)
        self._run("write task events", lambda c: c.execute(self._sql(WRITE), params))
        try:
            self.prune()
        except BrokerError as exc:  # the batch is written: an error here must not resend it
            log.warning("event store: pruning failed, trying again in a minute: %s", exc)

    def claim(self, name: str, ttl: float) -> bool:
        now = time.time()
        row = (name, now + ttl, now)
        return bool(self._run("claim", lambda c: c.execute(self._sql(CLAIM), row).rowcount > 0))

    def release(self, name: str) -> None:
        self._run("release a claim", lambda c: c.execute(self._sql(RELEASE), (name,)))

    def write_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        latest = {(s.minute, s.queue): s for s in samples}  # one row per key and statement
        rows = [latest[key] for key in sorted(latest)]
        params = ([int(s.minute) for s in rows], [_text(s.queue) for s in rows],
                  [int(s.ready) for s in rows], [int(s.delayed) for s in rows],
                  [int(s.inflight) for s in rows], [int(s.dead) for s in rows])
        self._run("store queue samples", lambda c: c.execute(self._sql(SAMPLES), params))

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        cutoff = now - self.retention
        params = {"cells": math.floor(cutoff - 60), "rollups": math.floor(cutoff - ROLLUP),
                  "cutoff": cutoff, "max_tasks": self.max_tasks, "hour_ago": now - 3600,
                  "now": now, "workers": now - WORKER_DROP_AFTER}

        def work(conn: _Conn) -> None:
            if not conn.execute(PRUNE_LOCK, (self._prune_key,)).fetchone()[0]:
                return  # another process is pruning right now
            for statement in PRUNE:
                conn.execute(self._sql(statement), params)

        self._run("prune task events", work, transaction=True)

    # -- reads -----------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        rows = self._read(self._sql(WORKERS), (now - WORKER_DROP_AFTER,))
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
        # Whole numbers: bigint against float8 would cast the key and skip its index.
        params = {"step": int(step), "since": int(since // width) * width,
                  "until": math.floor(until)}
        rows = self._read(self._sql(CELLS, table=table), params)
        return [(int(t), task, metric, float(v)) for t, task, metric, v in rows]

    def tasks(self, query: TaskQuery) -> list[TaskEntry]:
        return self.search(query).entries

    def search(self, query: TaskQuery) -> TaskPage:
        where, params = _task_filter(query)
        table = self._sql("{s}.conveyor_events_tasks")
        if query.scan is None or query.task_id:
            rows = self._read(f"SELECT {_COLUMNS} FROM {table} {where} "
                              "ORDER BY updated_at DESC LIMIT %s", (*params, query.limit))
            return TaskPage([TaskEntry(*row) for row in rows])
        # The newest ``scan`` rows in the time range (by the updated_at index), filtered.
        span, span_params = _task_filter(TaskQuery(since=query.since, until=query.until))
        recent = f"SELECT * FROM {table} {span} ORDER BY updated_at DESC LIMIT %s"
        rows = self._read(f"SELECT {_COLUMNS} FROM ({recent}) recent {where} "
                          "ORDER BY updated_at DESC LIMIT %s",
                          (*span_params, query.scan, *params, query.limit))
        found = [TaskEntry(*row) for row in rows]
        if len(found) >= query.limit:
            return TaskPage(found)
        # The oldest row looked at, and whether any row lies beyond it.
        edge = self._read(f"SELECT updated_at FROM {table} {span} "
                          "ORDER BY updated_at DESC LIMIT 2 OFFSET %s",
                          (*span_params, max(0, query.scan - 1)))
        return TaskPage(found, complete=len(edge) < 2, oldest=edge[0][0] if edge else None)

    def timeline(self, task_id: str) -> list[TimelineEvent]:
        rows = self._read(self._sql(TIMELINE), (_text(task_id),))
        return [TimelineEvent(*row) for row in rows]

    def queue_samples(self, since: float, until: float) -> list[QueueSample]:
        rows = self._read(self._sql(QUEUE_SAMPLES), (math.ceil(since), math.floor(until)))
        return [QueueSample(*row) for row in rows]


def _text(value: str) -> str:
    """``value`` as PostgreSQL's ``text`` can hold it (see the module docstring)."""
    if value.isascii() and "\x00" not in value:
        return value
    escaped = value.replace("\x00", "\\x00")
    return escaped.encode("utf-8", "backslashreplace").decode("utf-8")


def _maybe_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _maybe_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _batch_params(batch: Batch) -> dict[str, Any]:
    """The batch as the arrays ``WRITE`` unnests, each sorted by its table's key."""
    params: dict[str, Any] = {}
    cells = sorted((int(m), _text(t), k, float(v)) for (m, t, k), v in batch.cells.items())
    _put_cells(params, "c", cells)
    _put_cells(params, "r", sorted(_rollups(cells)))
    merged: dict[str, TaskEntry] = {}
    for entry in batch.tasks:  # an upsert may touch a row once per statement
        key = _text(entry.task_id)
        merged[key] = newer(merged.get(key), entry)
    rows = [merged[key] for key in sorted(merged)]
    texts = {"name", "state", "queue", "worker", "info"}
    floats = {"sent_at", "started_at", "done_at", "runtime", "wait", "updated_at"}
    for column in _TASK_COLUMNS:
        values = [getattr(entry, column) for entry in rows]
        if column == "task_id":
            values = [_text(v) for v in values]
        elif column in texts:
            values = [_maybe_text(v) for v in values]
        elif column in floats:
            values = [_maybe_float(v) for v in values]
        else:
            values = [int(v or 0) for v in values]
        params[f"t_{column}"] = values
    events = batch.timeline
    params.update(e_task=[_text(e.task_id) for e in events], e_ts=[float(e.ts) for e in events],
                  e_kind=[_text(e.kind) for e in events],
                  e_detail=[_text(e.detail or "") for e in events],
                  e_worker=[_maybe_text(e.worker) for e in events])
    return params


def _put_cells(params: dict[str, Any], key: str,
               cells: Sequence[tuple[int, str, str, float]]) -> None:
    params[f"{key}_m"] = [c[0] for c in cells]
    params[f"{key}_t"] = [c[1] for c in cells]
    params[f"{key}_k"] = [c[2] for c in cells]
    params[f"{key}_v"] = [c[3] for c in cells]


def _rollups(cells: Sequence[tuple[int, str, str, float]]) -> list[tuple[int, str, str, float]]:
    """Minute cells summed per 10 minutes (the all-time totals are not rolled up)."""
    out: dict[tuple[int, str, str], float] = {}
    for minute, task, metric, value in cells:
        if minute > 0:
            key = (minute // ROLLUP * ROLLUP, task, metric)
            out[key] = out.get(key, 0) + value
    return [(*key, value) for key, value in out.items()]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _task_filter(query: TaskQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    pairs: list[tuple[str, Any]] = [
        # LIKE's escape character is the backslash by default.
        ("task_id LIKE %s", query.task_id and _like(_text(query.task_id)) + "%"),
        ("name ILIKE %s", query.name and "%" + _like(_text(query.name)) + "%"),
        ("state = %s", query.state and _text(query.state)),
        ("queue = %s", query.queue and _text(query.queue)),
        ("updated_at >= %s", query.since),
        ("updated_at <= %s", query.until),
    ]
    for clause, value in pairs:
        if value is not None and value != "":
            clauses.append(clause)
            params.append(value)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
