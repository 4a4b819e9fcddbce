"""Results in PostgreSQL (``postgresql://``; usually the broker's own database and schema).

Connections, URLs (``?schema=``), errors and schema versions are shared with
the broker, see ``conveyor/_postgres.py``.

Schema (component ``results``, version 1; prefixed ``conveyor_`` like the
broker's tables, which usually share the schema)::

    conveyor_results      (task_id PRIMARY KEY, state, expires_at, payload bytea)
                          index (expires_at): cleanup deletes a range, not a scan
    conveyor_groups       (group_id PRIMARY KEY, expires_at, payload bytea)
    conveyor_chord_parts  (chord_id, idx, expires_at, payload bytea,
                           PRIMARY KEY (chord_id, idx))
                          one row per header result; the key makes a redelivered
                          header replace its part instead of counting twice.
                          Kept after the chord fires (until they expire), plus
                          one row at idx = size whose payload is the decimal
                          header index that completed the join: that index's
                          repeated chord_add gets the parts again
    conveyor_chords_done  (chord_id PRIMARY KEY, expires_at)
                          the join's "closed" mark, set when it fires or fails:
                          only the caller whose insert succeeds gets the parts
                          (chord_add) or the failure (chord_fail)

``chord_add``, ``chord_fail`` and ``set_fenced`` each run in one transaction
that first takes a transaction-scoped advisory lock on the chord (or task)
id: under READ COMMITTED two header results committing together would
otherwise each count without the other and neither fire.

``expires_at`` is Unix time; reads ignore expired rows and :meth:`cleanup`
deletes them (also run every ``CLEANUP_EVERY`` writes of a store).

Waiting: a write of a ready state ``NOTIFY``s ``conveyor_results_<schema>``
in the same statement; :meth:`wait` sleeps on the process's listening
connection and re-reads on any notification, polling every second in case
one was missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from conveyor._postgres import Listener, Pool, ensure_schema, parse_postgres_url, quoted
from conveyor.resultstores.base import ResultStore, Stored, deadline_after
from conveyor.resultstores.record import Attempt
from conveyor.states import READY_STATES

SCHEMA_VERSION = 1
MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    """CREATE TABLE {schema}.conveyor_results (
        task_id text PRIMARY KEY,
        state text NOT NULL,
        expires_at float8 NOT NULL,
        payload bytea NOT NULL)""",
    "CREATE INDEX conveyor_results_expiry ON {schema}.conveyor_results (expires_at)",
    """CREATE TABLE {schema}.conveyor_groups (
        group_id text PRIMARY KEY,
        expires_at float8 NOT NULL,
        payload bytea NOT NULL)""",
    """CREATE TABLE {schema}.conveyor_chord_parts (
        chord_id text NOT NULL,
        idx integer NOT NULL,
        expires_at float8 NOT NULL,
        payload bytea NOT NULL,
        PRIMARY KEY (chord_id, idx))""",
    """CREATE TABLE {schema}.conveyor_chords_done (
        chord_id text PRIMARY KEY,
        expires_at float8 NOT NULL)""",
),)

SET_RESULTS = """
    WITH written AS (
        INSERT INTO {s}.conveyor_results (task_id, state, expires_at, payload)
        SELECT * FROM unnest(%(ids)s::text[], %(states)s::text[], %(expires)s::float8[],
                             %(payloads)s::bytea[])
        ON CONFLICT (task_id) DO UPDATE SET state = excluded.state,
            expires_at = excluded.expires_at, payload = excluded.payload
        RETURNING task_id, state)
    SELECT count(pg_notify(%(channel)s, task_id)) FROM written
    WHERE state = ANY(%(ready)s::text[])"""
GET_RESULTS = """
    SELECT task_id, state, payload FROM {s}.conveyor_results
    WHERE task_id = ANY(%s) AND expires_at > %s"""
LOCK = "SELECT pg_advisory_xact_lock(hashtext(%s), hashtext(%s))"
FORGET = "DELETE FROM {s}.conveyor_results WHERE task_id = ANY(%s)"
SAVE_GROUP = """
    INSERT INTO {s}.conveyor_groups (group_id, expires_at, payload) VALUES (%s, %s, %s)
    ON CONFLICT (group_id) DO UPDATE SET expires_at = excluded.expires_at,
                                         payload = excluded.payload"""
LOAD_GROUP = "SELECT payload FROM {s}.conveyor_groups WHERE group_id = %s AND expires_at > %s"
CHORD_IS_DONE = "SELECT 1 FROM {s}.conveyor_chords_done WHERE chord_id = %s"
CHORD_PUT_PART = """
    INSERT INTO {s}.conveyor_chord_parts (chord_id, idx, expires_at, payload)
    VALUES (%s, %s, %s, %s)
    ON CONFLICT (chord_id, idx) DO UPDATE SET expires_at = excluded.expires_at,
                                              payload = excluded.payload"""
CHORD_COUNT = """
    SELECT count(*) FROM {s}.conveyor_chord_parts
    WHERE chord_id = %s AND idx >= 0 AND idx < %s"""
CHORD_MARK_DONE = """
    INSERT INTO {s}.conveyor_chords_done (chord_id, expires_at) VALUES (%s, %s)
    ON CONFLICT DO NOTHING"""
CHORD_PARTS = """
    SELECT payload FROM {s}.conveyor_chord_parts
    WHERE chord_id = %s AND idx >= 0 AND idx < %s ORDER BY idx"""
CHORD_DROP_PARTS = "DELETE FROM {s}.conveyor_chord_parts WHERE chord_id = %s"
CHORD_COMPLETER = "SELECT payload FROM {s}.conveyor_chord_parts WHERE chord_id = %s AND idx = %s"
CLEANUP = (
    "DELETE FROM {s}.conveyor_results WHERE expires_at <= %s",
    "DELETE FROM {s}.conveyor_groups WHERE expires_at <= %s",
    "DELETE FROM {s}.conveyor_chord_parts WHERE expires_at <= %s",
    "DELETE FROM {s}.conveyor_chords_done WHERE expires_at <= %s",
)
CLEANUP_EVERY = 1000
POLL = 1.0
RETRIED = frozenset({"read results", "load a group", "store results", "save a group"})

_Conn = Any  # psycopg.Connection[Any]; psycopg is an optional dependency


class PostgresResultStore(ResultStore):
    """See the module docstring."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = parse_postgres_url(url)
        self._pool = Pool(parsed)
        self._schema = quoted(parsed.schema)
        self._channel = f"conveyor_results_{parsed.schema}"[:63]
        self._writes = 0
        ensure_schema(self._pool, "results", SCHEMA_VERSION, MIGRATIONS)
        self._listener = Listener(self._pool, self._channel)

    def _sql(self, template: str) -> str:
        return template.replace("{s}", self._schema)

    def _run(self, action: str, work: Callable[[_Conn], Any], transaction: bool = False) -> Any:
        # Reads and plain upserts of a result may repeat; joins and fenced writes may not.
        return self._pool.run(action, work, transaction, retry=action in RETRIED)

    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        self.set_many([(task_id, state, payload)], ttl)

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        if not items:
            return
        params = self._rows(items, ttl)
        self._run("store results", lambda c: c.execute(self._sql(SET_RESULTS), params))
        self._wrote(len(items))

    def _rows(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> dict[str, Any]:
        expires = time.time() + ttl
        return {
            "ids": [t for t, _, _ in items], "states": [s for _, s, _ in items],
            "expires": [expires] * len(items), "payloads": [bytes(p) for _, _, p in items],
            "channel": self._channel, "ready": sorted(READY_STATES),
        }

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        params = self._rows([(task_id, state, payload)], ttl)

        def write(conn: _Conn) -> bool:
            conn.execute(LOCK, ("conveyor_result", task_id))
            found = conn.execute(self._sql(GET_RESULTS), ([task_id], time.time())).fetchone()
            if found is not None and attempt.superseded_by(Attempt.of_payload(bytes(found[2]))):
                return False
            conn.execute(self._sql(SET_RESULTS), params)
            return True

        stored = bool(self._run("store a result", write, transaction=True))
        if stored:
            self._wrote(1)
        return stored

    def _wrote(self, count: int) -> None:
        before = self._writes
        self._writes += count
        if before // CLEANUP_EVERY != self._writes // CLEANUP_EVERY:
            self.cleanup()

    def get(self, task_id: str) -> Stored | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        if not task_ids:
            return []
        params = (list(dict.fromkeys(task_ids)), time.time())
        found: dict[str, Stored] = self._run("read results", lambda c: {
            t: Stored(s, bytes(p)) for t, s, p in c.execute(self._sql(GET_RESULTS), params)})
        return [found.get(task_id) for task_id in task_ids]

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        deadline = deadline_after(timeout)
        while True:
            generation = self._listener.generation()  # before the read: no write is missed
            current = self.get(task_id)
            if current is not None and current.ready:
                return current
            step = self._listener.poll_step(POLL)
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return current
                step = min(step, remaining)
            self._listener.wait(generation, step)

    def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self._run("forget results",
                      lambda c: c.execute(self._sql(FORGET), (list(task_ids),)))

    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        row = (group_id, time.time() + ttl, payload)
        self._run("save a group", lambda c: c.execute(self._sql(SAVE_GROUP), row))

    def load_group(self, group_id: str) -> bytes | None:
        row = self._run("load a group", lambda c: c.execute(
            self._sql(LOAD_GROUP), (group_id, time.time())).fetchone())
        return None if row is None else bytes(row[0])

    def chord_add(
        self, chord_id: str, index: int, size: int, payload: bytes, ttl: float
    ) -> list[bytes] | None:
        def join(conn: _Conn) -> list[bytes] | None:
            conn.execute(LOCK, ("conveyor_chord", chord_id))
            if conn.execute(self._sql(CHORD_IS_DONE), (chord_id,)).fetchone() is not None:
                return self._repeat(conn, chord_id, index, size)
            expires = time.time() + ttl
            conn.execute(self._sql(CHORD_PUT_PART), (chord_id, index, expires, payload))
            if conn.execute(self._sql(CHORD_COUNT), (chord_id, size)).fetchone()[0] < size:
                return None
            if conn.execute(self._sql(CHORD_MARK_DONE), (chord_id, expires)).rowcount != 1:
                return None
            conn.execute(self._sql(CHORD_PUT_PART),
                         (chord_id, size, expires, str(index).encode()))
            return [bytes(p) for (p,) in conn.execute(self._sql(CHORD_PARTS), (chord_id, size))]

        result: list[bytes] | None = self._run("join a chord", join, transaction=True)
        return result

    def _repeat(self, conn: _Conn, chord_id: str, index: int, size: int) -> list[bytes] | None:
        """The parts again for the index that completed a fired chord; None for anyone else."""
        completer = conn.execute(self._sql(CHORD_COMPLETER), (chord_id, size)).fetchone()
        if completer is None or bytes(completer[0]) != str(index).encode():
            return None  # failed, fired by another index, or the parts expired
        parts = [bytes(p) for (p,) in conn.execute(self._sql(CHORD_PARTS), (chord_id, size))]
        return parts if len(parts) == size else None

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        def close(conn: _Conn) -> bool:
            conn.execute(LOCK, ("conveyor_chord", chord_id))
            done = conn.execute(self._sql(CHORD_MARK_DONE), (chord_id, time.time() + ttl))
            if done.rowcount != 1:
                return False
            conn.execute(self._sql(CHORD_DROP_PARTS), (chord_id,))
            return True

        return bool(self._run("fail a chord", close, transaction=True))

    def cleanup(self) -> int:
        now = time.time()
        return int(self._run("clean up results", lambda c: sum(
            c.execute(self._sql(statement), (now,)).rowcount for statement in CLEANUP)))

    def close(self) -> None:
        self._listener.stop()
        self._pool.close()
