"""The embedded default broker: one SQLite file, shared by every process.

What users get with no configuration (``sqlite:///conveyor.db``): nothing to
install or run, safe across threads, processes and forks, and nothing lost
when a process is killed (see ``conveyor/_sqlite.py`` for connections, WAL,
durability and locking).

Schema (every table is prefixed ``conveyor_`` so the result store, which
usually shares the file, and the application's own tables can coexist)::

    conveyor_messages            one row per stored message
      seq        INTEGER PRIMARY KEY   the rowid: insertion order, so FIFO comes free
      id         TEXT UNIQUE           the envelope id; UNIQUE makes "an id already
                                       stored is not stored again" a plain upsert
      queue      TEXT
      priority   INTEGER               0..9, 0 most urgent (Celery's order on Redis)
      state      TEXT                  'ready' | 'delayed' | 'leased'
      due        REAL                  when the row next needs attention: the ETA of
                                       a delayed row, the lease end of a leased one,
                                       NULL when ready
      token      TEXT                  proves the current lease (fencing)
      deliveries INTEGER               times handed out (requeue(count=False) undoes one)
      created    REAL                  enqueue time, moved to the ETA (or lease end)
                                       when a delayed row (or a lapsed lease) becomes
                                       ready: how long a ready row has waited, for stats
      body       BLOB                  last, so reading the other columns never
                                       touches a large body's overflow pages

      conveyor_messages_by_priority (queue, priority, seq) WHERE state = 'ready'
          "next ready messages of this queue": an index walk, no sort, whatever
          the backlog; also counts ready rows for stats
      conveyor_messages_due (due) WHERE state != 'ready'
          due delayed rows and expired leases (one range scan, made ready at
          every reserve), and the earliest ETA a waiting reserve must wake for

    conveyor_queues   (name PRIMARY KEY)        every queue that has held a message
    conveyor_dead     (n INTEGER PRIMARY KEY, id, queue, priority, body, reason, failed_at)
                      index (queue, n): newest first per queue;
                      index (queue, id): at most one letter per id
    conveyor_keys     (key PRIMARY KEY, message_id, expires_at)   idempotency keys
    conveyor_revoked  (task_id PRIMARY KEY, expires_at, terminate)
    conveyor_leases   (name PRIMARY KEY, holder, expires_at)     beat's leader lease
    conveyor_rate     (name PRIMARY KEY, next_at)   global rate limits: the next free
                      start slot (Unix time); a row at or before now is a full bucket,
                      so housekeeping deletes it

Expired idempotency keys, revocations and leases are deleted at most once a
minute per broker, inside a write that happens anyway.

Reserving: one ``BEGIN IMMEDIATE`` transaction makes due rows ready, takes
the best ``count`` ready rows, leases them (``UPDATE ... RETURNING``) and
reads which of their tasks are revoked, so a consumer needs no second
transaction to ask (``Delivery.revoked``).  An expired lease keeps its
``deliveries``; the next reservation adds one.  With
nothing ready, ``reserve`` sleeps with a 2 ms..50 ms backoff, checking the
cheap ``PRAGMA data_version`` and running a read-only peek only when another
connection committed, and never sleeps past the earliest ``due``.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Sequence
from functools import partial
from sqlite3 import Connection
from typing import Any

from conveyor._sqlite import (
    DATA_VERSION,
    HAS_RETURNING,
    Backoff,
    Database,
    in_chunks,
    parse_sqlite_url,
    placeholders,
)
from conveyor.brokers.base import (
    Broker,
    DeadLetter,
    Delivery,
    Envelope,
    QueueStats,
)
from conveyor.exceptions import ConfigurationError

SCHEMA_VERSION = 1
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS conveyor_messages (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL CHECK (state IN ('ready', 'delayed', 'leased')),
        due REAL,
        token TEXT,
        deliveries INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL,
        body BLOB NOT NULL)""",
    # Until 0.x the order was 9 first, on an index of that name; it is replaced.
    "DROP INDEX IF EXISTS conveyor_messages_ready",
    """CREATE INDEX IF NOT EXISTS conveyor_messages_by_priority
        ON conveyor_messages (queue, priority, seq) WHERE state = 'ready'""",
    """CREATE INDEX IF NOT EXISTS conveyor_messages_due
        ON conveyor_messages (due) WHERE state != 'ready'""",
    "CREATE TABLE IF NOT EXISTS conveyor_queues (name TEXT PRIMARY KEY)",
    """CREATE TABLE IF NOT EXISTS conveyor_dead (
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL,
        queue TEXT NOT NULL,
        priority INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL,
        failed_at REAL NOT NULL,
        body BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS conveyor_dead_queue ON conveyor_dead (queue, n)",
    "CREATE INDEX IF NOT EXISTS conveyor_dead_id ON conveyor_dead (queue, id)",
    """CREATE TABLE IF NOT EXISTS conveyor_keys (
        key TEXT PRIMARY KEY,
        message_id TEXT NOT NULL,
        expires_at REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS conveyor_keys_expiry ON conveyor_keys (expires_at)",
    """CREATE TABLE IF NOT EXISTS conveyor_revoked (
        task_id TEXT PRIMARY KEY,
        expires_at REAL NOT NULL,
        terminate INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS conveyor_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS conveyor_rate (
        name TEXT PRIMARY KEY,
        next_at REAL NOT NULL)""",
)

# -- producing ---------------------------------------------------------------
INSERT_MESSAGE = """
    INSERT INTO conveyor_messages (id, queue, priority, state, due, created, body)
    VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"""
MESSAGE_EXISTS = "SELECT 1 FROM conveyor_messages WHERE id = ?"
KEY_OWNER = "SELECT message_id FROM conveyor_keys WHERE key = ? AND expires_at > ?"
CLAIM_KEY = """
    INSERT INTO conveyor_keys (key, message_id, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET message_id = excluded.message_id,
                                    expires_at = excluded.expires_at"""
REGISTER_QUEUE = "INSERT INTO conveyor_queues (name) VALUES (?) ON CONFLICT DO NOTHING"

# -- consuming ---------------------------------------------------------------
MAKE_DUE_READY = """
    UPDATE conveyor_messages SET state = 'ready', due = NULL, token = NULL,
                                 created = max(created, due)
    WHERE state != 'ready' AND due <= ?"""
READY_IN_QUEUE = """
    SELECT seq, priority FROM conveyor_messages
    WHERE state = 'ready' AND queue = ? ORDER BY priority, seq LIMIT ?"""
# The token is the reservation's random prefix plus the row's seq: unique per
# message and fresh per reservation, in a single statement.
LEASE = """
    UPDATE conveyor_messages
    SET state = 'leased', token = ? || '.' || seq, due = ?, deliveries = deliveries + 1
    WHERE seq IN ({marks})"""
LEASED_COLUMNS = "seq, id, queue, body, deliveries, token, priority"
LEASE_RETURNING = LEASE + " RETURNING " + LEASED_COLUMNS
SELECT_LEASED = f"SELECT {LEASED_COLUMNS} FROM conveyor_messages WHERE seq IN ({{marks}})"
NEXT_DUE = "SELECT min(due) FROM conveyor_messages WHERE state != 'ready'"
ANY_READY = """
    SELECT 1 FROM conveyor_messages WHERE state = 'ready' AND queue IN ({marks}) LIMIT 1"""

HELD = "id = ? AND token = ? AND state = 'leased'"
ACK = f"DELETE FROM conveyor_messages WHERE {HELD}"
REQUEUE = f"""
    UPDATE conveyor_messages
    SET state = ?, due = ?, token = NULL, deliveries = deliveries - ?
    WHERE {HELD}"""
EXTEND = f"UPDATE conveyor_messages SET due = ? WHERE {HELD}"
TAKE_HELD = f"DELETE FROM conveyor_messages WHERE {HELD} RETURNING queue, priority, body"
SELECT_HELD = f"SELECT queue, priority, body FROM conveyor_messages WHERE {HELD}"
DROP_DEAD_ID = "DELETE FROM conveyor_dead WHERE queue = ? AND id = ?"  # one letter per id
INSERT_DEAD = """
    INSERT INTO conveyor_dead (id, queue, priority, reason, failed_at, body)
    VALUES (?, ?, ?, ?, ?, ?)"""

# -- inspection and repair ---------------------------------------------------
ALL_QUEUES = "SELECT name FROM conveyor_queues ORDER BY name"
COUNT_READY = """
    SELECT count(*), min(created) FROM conveyor_messages WHERE state = 'ready' AND queue = ?"""
COUNT_WAITING = """
    SELECT queue, state, count(*) FROM conveyor_messages
    WHERE state != 'ready' GROUP BY queue, state"""
COUNT_DEAD = "SELECT queue, count(*) FROM conveyor_dead GROUP BY queue"
PURGE = "DELETE FROM conveyor_messages WHERE queue = ? AND state IN ('ready', 'delayed')"
LIST_DEAD = """
    SELECT id, queue, body, reason, failed_at FROM conveyor_dead
    WHERE queue = ? ORDER BY n DESC LIMIT ? OFFSET ?"""
DEAD_COLUMNS = "id, queue, priority, body"
TAKE_DEAD_ALL = f"DELETE FROM conveyor_dead WHERE queue = ? RETURNING {DEAD_COLUMNS}, n"
TAKE_DEAD_ONE = f"DELETE FROM conveyor_dead WHERE queue = ? AND id = ? RETURNING {DEAD_COLUMNS}, n"
SELECT_DEAD_ALL = f"SELECT {DEAD_COLUMNS}, n FROM conveyor_dead WHERE queue = ?"
SELECT_DEAD_ONE = f"SELECT {DEAD_COLUMNS}, n FROM conveyor_dead WHERE queue = ? AND id = ?"
DELETE_DEAD_ALL = "DELETE FROM conveyor_dead WHERE queue = ?"
DELETE_DEAD_ONE = "DELETE FROM conveyor_dead WHERE queue = ? AND id = ?"

# -- control plane -----------------------------------------------------------
REVOKE = """
    INSERT INTO conveyor_revoked (task_id, expires_at, terminate) VALUES (?, ?, ?)
    ON CONFLICT (task_id) DO UPDATE SET expires_at = excluded.expires_at,
                                        terminate = excluded.terminate"""
REVOKED = """
    SELECT task_id, terminate FROM conveyor_revoked
    WHERE task_id IN ({marks}) AND expires_at > ?"""
ACQUIRE_LEASE = """
    INSERT INTO conveyor_leases (name, holder, expires_at) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE conveyor_leases.holder = excluded.holder OR conveyor_leases.expires_at <= ?"""
PING = "SELECT 1"
RELEASE_LEASE = "DELETE FROM conveyor_leases WHERE name = ? AND holder = ?"
LEASE_HOLDER = "SELECT holder FROM conveyor_leases WHERE name = ? AND expires_at > ?"
RATE_NEXT = "SELECT next_at FROM conveyor_rate WHERE name = ?"
RATE_TAKE = """
    INSERT INTO conveyor_rate (name, next_at) VALUES (?, ?)
    ON CONFLICT (name) DO UPDATE SET next_at = excluded.next_at"""

HOUSEKEEPING = (
    "DELETE FROM conveyor_keys WHERE expires_at <= ?",
    "DELETE FROM conveyor_revoked WHERE expires_at <= ?",
    "DELETE FROM conveyor_leases WHERE expires_at <= ?",
    "DELETE FROM conveyor_rate WHERE next_at <= ?",
)
HOUSEKEEPING_EVERY = 60.0
DEFAULT_IDEMPOTENCY_TTL = 86400.0

POLL_START = 0.0005  # a woken consumer: ~0.3 ms late on average (was 2 ms: ~1-2 ms)
POLL_MAX = 0.05

_Row = tuple[Any, ...]


class SQLiteBroker(Broker):
    """The broker in one SQLite file; see the module docstring for the layout.

    ``options`` come from ``broker_transport_options``: ``busy_timeout``
    (seconds), ``synchronous`` (``NORMAL``/``FULL``/``EXTRA``) and
    ``poll_interval`` (the longest sleep of an idle ``reserve``, seconds).
    """

    def __init__(self, url: str = "sqlite:///conveyor.db", **options: object) -> None:
        self.url = url
        self._poll_max = _poll_interval(url, options.pop("poll_interval", POLL_MAX))
        self._db = Database(parse_sqlite_url(url, **options), "broker", SCHEMA, SCHEMA_VERSION)
        self._housekeeping_due = 0.0
        self._db.connection()  # fail now, not at the first enqueue, on a bad path or file

    # -- producing -------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        return self.enqueue_many([envelope])[0]

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        if not envelopes:
            return []
        return self._db.write(partial(self._store, envelopes))

    def _store(self, envelopes: Sequence[Envelope], conn: Connection) -> list[str]:
        now = time.time()
        ids: list[str] = []
        # Runs keep FIFO order in a batch that mixes keyed and plain envelopes;
        # plain runs go through one executemany, the fast path.
        for plain, run in itertools.groupby(envelopes, lambda e: e.idempotency_key is None):
            if plain:
                batch = list(run)
                conn.executemany(INSERT_MESSAGE, [_row(e, now) for e in batch])
                ids.extend(e.id for e in batch)
            else:
                ids.extend(self._store_keyed(conn, e, now) for e in run)
        conn.executemany(REGISTER_QUEUE, [(q,) for q in {e.queue for e in envelopes}])
        self._housekeep(conn, now)
        return ids

    @staticmethod
    def _store_keyed(conn: Connection, env: Envelope, now: float) -> str:
        if conn.execute(MESSAGE_EXISTS, (env.id,)).fetchone() is not None:
            return env.id
        owner = conn.execute(KEY_OWNER, (env.idempotency_key, now)).fetchone()
        if owner is not None:
            return str(owner[0])
        ttl = env.idempotency_ttl if env.idempotency_ttl is not None else DEFAULT_IDEMPOTENCY_TTL
        conn.execute(CLAIM_KEY, (env.idempotency_key, env.id, now + ttl))
        conn.execute(INSERT_MESSAGE, _row(env, now))
        return env.id

    def _housekeep(self, conn: Connection, now: float) -> None:
        if time.monotonic() < self._housekeeping_due:
            return
        self._housekeeping_due = time.monotonic() + HOUSEKEEPING_EVERY
        for statement in HOUSEKEEPING:
            conn.execute(statement, (now,))

    # -- consuming -------------------------------------------------------
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if not names or count <= 0:
            time.sleep(max(timeout, 0.0))
            return []
        deadline = time.monotonic() + timeout
        backoff = Backoff(POLL_START, self._poll_max)
        while True:
            got, version, next_due = self._db.write(
                partial(self._reserve_once, names, count, lease))
            if got or not self._wait_for_work(names, version, next_due, deadline, backoff):
                return got

    def _reserve_once(
        self, names: list[str], count: int, lease: float, conn: Connection
    ) -> tuple[list[Delivery], int, float | None]:
        now = time.time()
        # Read inside the transaction: no other commit can slip in unseen
        # between this and the wait that follows.
        version = int(conn.execute(DATA_VERSION).fetchone()[0])
        conn.execute(MAKE_DUE_READY, (now,))
        chosen = _best(conn, names, count)
        if not chosen:
            return [], version, conn.execute(NEXT_DUE).fetchone()[0]
        return _lease(conn, chosen, now, lease), version, None

    def _wait_for_work(
        self, names: list[str], version: int, next_due: float | None,
        deadline: float, backoff: Backoff,
    ) -> bool:
        """Sleep until something may be reservable (True) or the deadline passes (False)."""
        any_ready = ANY_READY.format(marks=placeholders(len(names)))
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False
            wake = deadline if next_due is None else min(deadline, now + next_due - time.time())
            if wake <= now:
                return True
            time.sleep(min(backoff.next(), wake - now))
            current = self._db.data_version()
            if current == version:
                continue
            version = current
            ready, next_due = self._db.read(
                lambda c: (c.execute(any_ready, names).fetchone() is not None,
                           c.execute(NEXT_DUE).fetchone()[0]))
            if ready:
                return True

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        return self._db.write(
            lambda c: [c.execute(ACK, (d.id, d.token)).rowcount == 1 for d in deliveries])

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        state, due = ("delayed", time.time() + delay) if delay > 0 else ("ready", None)
        params = (state, due, 0 if count else 1, delivery.id, delivery.token)
        return self._db.write(lambda c: c.execute(REQUEUE, params).rowcount == 1)

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        def bury(conn: Connection) -> bool:
            held = (delivery.id, delivery.token)
            if HAS_RETURNING:
                row = conn.execute(TAKE_HELD, held).fetchone()
            else:
                row = conn.execute(SELECT_HELD, held).fetchone()
                conn.execute(ACK, held)
            if row is None:
                return False
            queue, priority, body = row
            conn.execute(DROP_DEAD_ID, (queue, delivery.id))
            conn.execute(INSERT_DEAD, (delivery.id, queue, priority, reason, time.time(), body))
            return True

        return self._db.write(bury)

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        if not deliveries:
            return []
        until = time.time() + lease
        return self._db.write(
            lambda c: [c.execute(EXTEND, (until, d.id, d.token)).rowcount == 1
                       for d in deliveries])

    # -- inspection and repair --------------------------------------------
    def queues(self) -> list[str]:
        return self._db.query(lambda c: [str(name) for (name,) in c.execute(ALL_QUEUES)])

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        if queues is not None and not queues:
            return []
        return self._db.read(partial(self._stats, queues))

    @staticmethod
    def _stats(queues: Sequence[str] | None, conn: Connection) -> list[QueueStats]:
        names = [n for (n,) in conn.execute(ALL_QUEUES)] if queues is None else list(queues)
        waiting: dict[tuple[str, str], int] = {
            (queue, state): n for queue, state, n in conn.execute(COUNT_WAITING)}
        dead: dict[str, int] = dict(conn.execute(COUNT_DEAD).fetchall())
        now = time.time()
        out = []
        for name in names:
            ready, oldest = conn.execute(COUNT_READY, (name,)).fetchone()
            out.append(QueueStats(
                queue=name, ready=ready, delayed=waiting.get((name, "delayed"), 0),
                inflight=waiting.get((name, "leased"), 0), dead=dead.get(name, 0),
                oldest_age=0.0 if oldest is None else max(0.0, now - oldest)))
        return out

    def purge(self, queue: str) -> int:
        return self._db.write(lambda c: c.execute(PURGE, (queue,)).rowcount)

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self._db.query(lambda c: [
            DeadLetter(id_, q, bytes(body), reason, failed_at)
            for id_, q, body, reason, failed_at in c.execute(LIST_DEAD, (queue, limit, offset))
        ])

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        def replay(conn: Connection) -> int:
            now = time.time()
            letters = sorted(_take_dead(conn, queue, ids), key=lambda row: row[-1])
            conn.executemany(INSERT_MESSAGE, [
                (id_, q, priority, "ready", None, now, body)
                for id_, q, priority, body, _ in letters])
            return len(letters)

        return self._db.write(replay)

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        def discard(conn: Connection) -> int:
            if ids is None:
                return int(conn.execute(DELETE_DEAD_ALL, (queue,)).rowcount)
            return sum(conn.execute(DELETE_DEAD_ONE, (queue, i)).rowcount for i in ids)

        return self._db.write(discard)

    # -- control plane ---------------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        now = time.time()
        rows = [(task_id, now + ttl, int(terminate)) for task_id in ids]

        def store(conn: Connection) -> None:
            conn.executemany(REVOKE, rows)
            self._housekeep(conn, now)

        self._db.write(store)

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        if not ids:
            return {}
        return self._db.read(partial(_revoked_among, task_ids=ids, now=time.time()))

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        params = (name, holder, now + ttl, now)
        return self._db.write(lambda c: c.execute(ACQUIRE_LEASE, params).rowcount == 1)

    def release_lease(self, name: str, holder: str) -> None:
        self._db.write(lambda c: c.execute(RELEASE_LEASE, (name, holder)))

    def lease_holder(self, name: str) -> str | None:
        row = self._db.query(lambda c: c.execute(LEASE_HOLDER, (name, time.time())).fetchone())
        return None if row is None else str(row[0])

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        def take(conn: Connection) -> float:
            now = time.time()  # read under the write lock: takers are serialised
            slot = now
            for name, _ in limits:
                row = conn.execute(RATE_NEXT, (name,)).fetchone()
                slot = max(slot, float(row[0]) if row else 0.0)
            if slot - now <= within:
                conn.executemany(RATE_TAKE, [(name, slot + gap) for name, gap in limits])
            return slot - now

        return self._db.write(take)

    def ping(self) -> bool:
        self._db.query(lambda c: c.execute(PING).fetchone())
        return True

    def close(self) -> None:
        self._db.close()


def _poll_interval(url: str, value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds <= 5:
        raise ConfigurationError(
            f"broker {url!r}: poll_interval={value!r}; use seconds in (0, 5]")
    return seconds


def _row(env: Envelope, now: float) -> _Row:
    if env.eta is not None and env.eta > now:
        return (env.id, env.queue, env.priority, "delayed", env.eta, now, env.body)
    return (env.id, env.queue, env.priority, "ready", None, now, env.body)


def _best(conn: Connection, names: list[str], count: int) -> list[int]:
    """Seqs of the ``count`` best ready rows: priority, then queue order, then FIFO.

    One index walk per queue, merged here, stays cheap under any backlog; a
    single query ordering by a CASE over the queues would sort every ready row.
    """
    candidates = [
        (priority, rank, seq)
        for rank, name in enumerate(names)
        for seq, priority in conn.execute(READY_IN_QUEUE, (name, count))
    ]
    candidates.sort()
    return [seq for _, _, seq in candidates[:count]]


def _lease(conn: Connection, seqs: list[int], now: float, lease: float) -> list[Delivery]:
    prefix = uuid.uuid4().hex
    until = now + lease
    rows: list[_Row] = []
    for chunk in in_chunks(seqs):
        marks = placeholders(len(chunk))
        if HAS_RETURNING:
            rows += conn.execute(LEASE_RETURNING.format(marks=marks), (prefix, until, *chunk))
        else:
            conn.execute(LEASE.format(marks=marks), (prefix, until, *chunk))
            rows += conn.execute(SELECT_LEASED.format(marks=marks), chunk)
    # RETURNING gives no order guarantee; hand them out in the chosen order.
    rank = {seq: i for i, seq in enumerate(seqs)}
    rows.sort(key=lambda row: rank[row[0]])
    # Broker ids carry a ``~N`` suffix per retry; revocations name the task id.
    revoked = _revoked_among(conn, [row[1].split("~", 1)[0] for row in rows], now)
    return [
        Delivery(id_, queue, bytes(body), deliveries, token, priority,
                 revoked=id_.split("~", 1)[0] in revoked)
        for _, id_, queue, body, deliveries, token, priority in rows
    ]


def _revoked_among(conn: Connection, task_ids: Sequence[str], now: float) -> dict[str, bool]:
    """Which of ``task_ids`` are revoked, each with its ``terminate`` flag."""
    found: dict[str, bool] = {}
    for chunk in in_chunks(list(dict.fromkeys(task_ids))):
        sql = REVOKED.format(marks=placeholders(len(chunk)))
        found.update((t, bool(term)) for t, term in conn.execute(sql, (*chunk, now)))
    return found


def _take_dead(conn: Connection, queue: str, ids: Sequence[str] | None) -> list[_Row]:
    """Remove and return dead letters (all of ``queue`` when ``ids`` is None)."""
    if ids is None:
        if HAS_RETURNING:
            return conn.execute(TAKE_DEAD_ALL, (queue,)).fetchall()
        rows = conn.execute(SELECT_DEAD_ALL, (queue,)).fetchall()
        conn.execute(DELETE_DEAD_ALL, (queue,))
        return rows
    taken: list[_Row] = []
    for id_ in dict.fromkeys(ids):
        if HAS_RETURNING:
            taken.extend(conn.execute(TAKE_DEAD_ONE, (queue, id_)).fetchall())
        else:
            taken.extend(conn.execute(SELECT_DEAD_ONE, (queue, id_)).fetchall())
            conn.execute(DELETE_DEAD_ONE, (queue, id_))
    return taken
