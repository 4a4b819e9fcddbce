"""Results in a SQLite file, usually the broker's own (``result_backend`` defaults to it).

Connections, WAL, durability and locking are shared with the broker, see
``conveyor/_sqlite.py``.

Schema (prefixed ``conveyor_`` like the broker's tables, which share the file)::

    conveyor_results      (task_id PRIMARY KEY, state, expires_at, payload BLOB)
                          index (expires_at): cleanup deletes a range, not a scan
    conveyor_groups       (group_id PRIMARY KEY, expires_at, payload BLOB)
    conveyor_chord_parts  (chord_id, idx, expires_at, payload BLOB,
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

``expires_at`` is Unix time; reads ignore expired rows and :meth:`cleanup`
deletes them (also run every ``CLEANUP_EVERY`` writes of a store).

Waiting: SQLite cannot notify, so :meth:`wait` polls ``PRAGMA data_version``
(it changes when another connection commits and costs next to nothing),
starting at 1 ms so a short task's result comes back fast and backing off to
50 ms so a long wait costs nothing; the result row is read only after a commit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from sqlite3 import Connection

from conveyor._sqlite import Backoff, Database, in_chunks, parse_sqlite_url, placeholders
from conveyor.resultstores.base import FencedWrite, ResultStore, Stored, deadline_after
from conveyor.resultstores.record import Attempt

SCHEMA_VERSION = 1
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS conveyor_results (
        task_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        expires_at REAL NOT NULL,
        payload BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS conveyor_results_expiry ON conveyor_results (expires_at)",
    """CREATE TABLE IF NOT EXISTS conveyor_groups (
        group_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        payload BLOB NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS conveyor_chord_parts (
        chord_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        expires_at REAL NOT NULL,
        payload BLOB NOT NULL,
        PRIMARY KEY (chord_id, idx))""",
    """CREATE TABLE IF NOT EXISTS conveyor_chords_done (
        chord_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL)""",
)

SET_RESULT = """
    INSERT INTO conveyor_results (task_id, state, expires_at, payload) VALUES (?, ?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET state = excluded.state,
                                        expires_at = excluded.expires_at,
                                        payload = excluded.payload"""
# A task's first record (the usual case: no STARTED record, no earlier run)
# needs no fence check: nothing is stored to be newer than it.
ADD_RESULT = """
    INSERT INTO conveyor_results (task_id, state, expires_at, payload) VALUES (?, ?, ?, ?)
    ON CONFLICT (task_id) DO NOTHING"""
GET_RESULT = """
    SELECT state, payload FROM conveyor_results WHERE task_id = ? AND expires_at > ?"""
GET_RESULTS = """
    SELECT task_id, state, payload FROM conveyor_results
    WHERE task_id IN ({marks}) AND expires_at > ?"""
FORGET = "DELETE FROM conveyor_results WHERE task_id = ?"
SAVE_GROUP = """
    INSERT INTO conveyor_groups (group_id, expires_at, payload) VALUES (?, ?, ?)
    ON CONFLICT (group_id) DO UPDATE SET expires_at = excluded.expires_at,
                                         payload = excluded.payload"""
LOAD_GROUP = "SELECT payload FROM conveyor_groups WHERE group_id = ? AND expires_at > ?"
CHORD_IS_DONE = "SELECT 1 FROM conveyor_chords_done WHERE chord_id = ?"
CHORD_PUT_PART = """
    INSERT OR REPLACE INTO conveyor_chord_parts (chord_id, idx, expires_at, payload)
    VALUES (?, ?, ?, ?)"""
CHORD_COUNT = """
    SELECT count(*) FROM conveyor_chord_parts WHERE chord_id = ? AND idx >= 0 AND idx < ?"""
CHORD_MARK_DONE = """
    INSERT INTO conveyor_chords_done (chord_id, expires_at) VALUES (?, ?)
    ON CONFLICT DO NOTHING"""
CHORD_PARTS = """
    SELECT payload FROM conveyor_chord_parts
    WHERE chord_id = ? AND idx >= 0 AND idx < ? ORDER BY idx"""
CHORD_DROP_PARTS = "DELETE FROM conveyor_chord_parts WHERE chord_id = ?"
CHORD_COMPLETER = "SELECT payload FROM conveyor_chord_parts WHERE chord_id = ? AND idx = ?"
CLEANUP = (
    "DELETE FROM conveyor_results WHERE expires_at <= ?",
    "DELETE FROM conveyor_groups WHERE expires_at <= ?",
    "DELETE FROM conveyor_chord_parts WHERE expires_at <= ?",
    "DELETE FROM conveyor_chords_done WHERE expires_at <= ?",
)
CLEANUP_EVERY = 1000

WAIT_START = 0.00025
WAIT_MAX = 0.05


class SQLiteResultStore(ResultStore):
    """See the module docstring."""

    batches_fenced_writes = True

    def __init__(self, url: str = "sqlite:///conveyor.db") -> None:
        self.url = url
        self._db = Database(parse_sqlite_url(url), "results", SCHEMA, SCHEMA_VERSION)
        self._writes = 0
        self._db.connection()  # fail now on a bad path or file

    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        row = (task_id, state, time.time() + ttl, payload)
        self._db.write_one(lambda c: c.execute(SET_RESULT, row))
        self._wrote(1)

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        row = (task_id, state, time.time() + ttl, payload)
        # First try the insert alone, one statement in autocommit: it adds the
        # row only where none exists, and then there is nothing to compare.
        if self._db.write_one(lambda c: c.execute(ADD_RESULT, row).rowcount) == 1:
            self._wrote(1)
            return True
        # A record exists (STARTED, an earlier run, an expired one): the fenced path.
        return self.set_many_fenced([FencedWrite(task_id, state, payload, attempt)], ttl)[0]

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        """Read, compare and write each in one ``BEGIN IMMEDIATE`` transaction for all."""
        if not writes:
            return []
        expires = time.time() + ttl

        def write(conn: Connection) -> list[bool]:
            now, done = time.time(), []
            for task_id, state, payload, attempt in writes:
                found = conn.execute(GET_RESULT, (task_id, now)).fetchone()
                stale = found is not None and attempt.superseded_by(
                    Attempt.of_payload(bytes(found[1])))
                if not stale:
                    conn.execute(SET_RESULT, (task_id, state, expires, payload))
                done.append(not stale)
            return done

        stored = self._db.write(write)
        self._wrote(sum(stored))
        return stored

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        if not items:
            return
        expires = time.time() + ttl
        rows = [(task_id, state, expires, payload) for task_id, state, payload in items]
        self._db.write(lambda c: c.executemany(SET_RESULT, rows))
        self._wrote(len(rows))

    def _wrote(self, count: int) -> None:
        # Opportunistic cleanup: the expiry index makes it a short range delete.
        before = self._writes
        self._writes += count
        if before // CLEANUP_EVERY != self._writes // CLEANUP_EVERY:
            self.cleanup()

    def get(self, task_id: str) -> Stored | None:
        row = self._db.query(lambda c: c.execute(GET_RESULT, (task_id, time.time())).fetchone())
        return None if row is None else Stored(row[0], bytes(row[1]))

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        if not task_ids:
            return []
        found = self._db.read(partial(_get_many, list(task_ids), time.time()))
        return [found.get(task_id) for task_id in task_ids]

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        deadline = deadline_after(timeout)
        backoff = Backoff(WAIT_START, WAIT_MAX)
        while True:
            # The version is read before the row, so a commit in between is
            # either seen by the read or changes the version: none is missed.
            version = self._db.data_version()
            current = self.get(task_id)
            if current is not None and current.ready:
                return current
            if not self._sleep_until_commit(version, deadline, backoff):
                return current

    def _sleep_until_commit(self, version: int, deadline: float | None, backoff: Backoff) -> bool:
        """Sleep until another connection commits (True) or the deadline passes (False)."""
        while True:
            step = backoff.next()
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                step = min(step, remaining)
            time.sleep(step)
            if self._db.data_version() != version:
                return True

    def forget(self, task_ids: Sequence[str]) -> None:
        if task_ids:
            self._db.write(lambda c: c.executemany(FORGET, [(t,) for t in task_ids]))

    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        row = (group_id, time.time() + ttl, payload)
        self._db.write(lambda c: c.execute(SAVE_GROUP, row))

    def load_group(self, group_id: str) -> bytes | None:
        row = self._db.query(lambda c: c.execute(LOAD_GROUP, (group_id, time.time())).fetchone())
        return None if row is None else bytes(row[0])

    def chord_add(
        self, chord_id: str, index: int, size: int, payload: bytes, ttl: float
    ) -> list[bytes] | None:
        # One BEGIN IMMEDIATE transaction: across processes, exactly one caller
        # sees the count reach ``size`` and wins the insert of the done mark.
        # The completer names itself in a row at idx = size (see the schema).
        def join(conn: Connection) -> list[bytes] | None:
            if conn.execute(CHORD_IS_DONE, (chord_id,)).fetchone() is not None:
                return _repeat(conn, chord_id, index, size)
            expires = time.time() + ttl
            conn.execute(CHORD_PUT_PART, (chord_id, index, expires, payload))
            if conn.execute(CHORD_COUNT, (chord_id, size)).fetchone()[0] < size:
                return None
            if conn.execute(CHORD_MARK_DONE, (chord_id, expires)).rowcount != 1:
                return None
            conn.execute(CHORD_PUT_PART, (chord_id, size, expires, str(index).encode()))
            return [bytes(p) for (p,) in conn.execute(CHORD_PARTS, (chord_id, size))]

        return self._db.write(join)

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        # Closes the same done mark chord_add checks, in one transaction: the
        # first failing member wins it and the body never fires afterwards.
        def close(conn: Connection) -> bool:
            if conn.execute(CHORD_MARK_DONE, (chord_id, time.time() + ttl)).rowcount != 1:
                return False
            conn.execute(CHORD_DROP_PARTS, (chord_id,))
            return True

        return self._db.write(close)

    def cleanup(self) -> int:
        now = time.time()
        return self._db.write(
            lambda c: sum(c.execute(statement, (now,)).rowcount for statement in CLEANUP))

    def close(self) -> None:
        self._db.close()


def _get_many(task_ids: list[str], now: float, conn: Connection) -> dict[str, Stored]:
    found: dict[str, Stored] = {}
    for chunk in in_chunks(list(dict.fromkeys(task_ids))):
        sql = GET_RESULTS.format(marks=placeholders(len(chunk)))
        for task_id, state, payload in conn.execute(sql, (*chunk, now)):
            found[task_id] = Stored(state, bytes(payload))
    return found


def _repeat(conn: Connection, chord_id: str, index: int, size: int) -> list[bytes] | None:
    """The parts again for the index that completed a fired chord; None for anyone else."""
    completer = conn.execute(CHORD_COMPLETER, (chord_id, size)).fetchone()
    if completer is None or bytes(completer[0]) != str(index).encode():
        return None  # failed, fired by another index, or the parts expired
    parts = [bytes(p) for (p,) in conn.execute(CHORD_PARTS, (chord_id, size))]
    return parts if len(parts) == size else None
