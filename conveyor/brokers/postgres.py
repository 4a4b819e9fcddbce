"""The PostgreSQL broker (``postgresql://`` or ``postgres://``, psycopg 3).

For teams that already run PostgreSQL and would rather not run Redis.
The URL is libpq's plus ``schema=NAME`` (default ``public``), and, behind
PgBouncer's transaction pooling, ``pool_mode=transaction`` and
``listen_url=`` (see ``conveyor/_postgres.py`` for those, connections,
errors and schema versions).  Options (``broker_transport_options``):
``schema``, ``poll_interval`` (seconds between checks when no notification
arrives, or ever, without a listening connection; default 1) and
``vacuum_every`` (settled messages between VACUUMs of the messages table by
the acknowledging process; default 5,000, 0 leaves it to autovacuum; see
``conveyor/_pg_vacuum.py``).

Schema (component ``broker``, version 3, created on first use; every table
is prefixed ``conveyor_`` so the application's own tables can sit beside it)::

    conveyor_messages            one row per stored message
      seq        bigint identity PRIMARY KEY   insertion order, so FIFO comes free
      id         text UNIQUE           the envelope id; the unique index makes "an id
                                       already stored is not stored again" a plain
                                       ON CONFLICT DO NOTHING
      queue      text
      priority   smallint              0..9, 0 most urgent (Celery's order on Redis)
      state      text                  'ready' | 'delayed' | 'leased'
      due        float8                when the row next needs attention: the ETA of
                                       a delayed row, the lease end of a leased one
                                       (Unix time), NULL when ready
      token      text                  proves the current lease (fencing)
      deliveries integer               times handed out (requeue(count=False) undoes one)
      created    float8                enqueue time, moved to the ETA (or lease end)
                                       when a delayed row (or a lapsed lease) becomes
                                       ready: how long a ready row has waited, for stats
      body       bytea                 last: TOASTed when large, never read by scans
      fillfactor 80: leaves room on each page for the new row version a lease
      makes, so it stays on the same page as the one it replaces.
      (version 3) autovacuum_vacuum_scale_factor 0, _threshold 10000,
      _cost_delay 0: autovacuum, where the server runs it, vacuums after a
      fixed count of dead rows at full speed (the default, a fifth of the
      live rows, means "never" after a large backlog and "every minute,
      slowly" for a near-empty queue).

      conveyor_messages_by_priority (queue, priority, seq) WHERE state = 'ready'
          "next ready messages of this queue" is an index walk, no sort, whatever
          the backlog; it holds only ready rows, so delayed and leased ones do not
          bloat the hot path
      conveyor_messages_due (due) WHERE state <> 'ready'
          delayed rows and expired leases that are due (one range scan, made ready
          at every reserve), and the earliest time a waiting reserve must wake for

    conveyor_queues   (name PRIMARY KEY)          every queue that has held a message
    conveyor_dead     (n identity PRIMARY KEY, id, queue, priority, reason,
                       failed_at, body)
                      UNIQUE (queue, id): at most one letter per id, by upsert;
                      index (queue, failed_at): newest first per queue
    conveyor_keys     (key PRIMARY KEY, message_id, expires_at)   idempotency keys;
                      the primary key serialises producers racing for one key;
                      index (expires_at) for housekeeping
    conveyor_revoked  (task_id PRIMARY KEY, expires_at, terminate)
    conveyor_leases   (name PRIMARY KEY, holder, expires_at)      beat's leader lease
    conveyor_rate     (name PRIMARY KEY, next_at)   (version 2) a global rate limit's
                      next free start slot; a row at or before now is a full bucket

Reserving: one transaction makes due rows ready and leases the best ``count``
ready rows, taken with ``FOR UPDATE SKIP LOCKED`` (one index walk per queue,
merged), so concurrent consumers never wait on or share a row.  It is sent as
one message of three statements, so the server commits it without waiting for
the client: a reserve cut off by a dead path cannot leave its rows locked.

Waking: producers ``NOTIFY`` the channel ``conveyor_<schema>`` in the same
statement as the insert, so the notification is sent when (and only if) the
message commits.  Each broker process keeps one connection listening in a
thread; a waiting ``reserve`` sleeps until a notification, the earliest
``due`` (a delayed message or a lease running out) or ``poll_interval``,
whichever comes first, so a missed notification costs at most that long.
The listening connection goes to ``listen_url`` when the URL has one; a
``pool_mode=transaction`` URL without it has none, and waiting workers find
new messages by that poll alone (within ``poll_interval``).

Times are the clients' Unix clocks (``time.time()``), as in the SQLite and
Redis brokers: keep the machines' clocks in sync (NTP).

Churn: the table only ever holds live messages, but each message leaves two
dead row versions (the one its lease replaced, the one its ack deleted) and
index entries for both; leasing changes ``state`` and ``due``, which the
partial indexes read, so it cannot be a HOT update.  Vacuum reclaims them
(the acknowledging process runs one every ``vacuum_every`` messages; the
per-table autovacuum settings above where autovacuum runs), and the space is
reused: table and indexes stay the same size over a 1,000,000-task run.
Measured with ``benchmarks/pg_churn.py`` (docs/performance.md, ADR 0019) on
a server with autovacuum off: every 50,000 tasks, 3.9-5.6 MB for all the
broker's tables and indexes together (heap 2.4-3.5 MB), at most 11,640 dead
rows, 199 of the broker's VACUUMs in all (one per 5,000 tasks), 246-941
tasks/s with the machine's load.

Expired idempotency keys, revocations and leases are deleted at most once a
minute per broker, inside a write that happens anyway.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from conveyor._pg_vacuum import DEFAULT_VACUUM_EVERY, Vacuum
from conveyor._postgres import Listener, Pool, ensure_schema, errors, parse_postgres_url, quoted
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats
from conveyor.exceptions import ConfigurationError

IDLE = 0  # psycopg.pq.TransactionStatus.IDLE, without importing psycopg at import time

SCHEMA_VERSION = 3
AUTOVACUUM_THRESHOLD = 10_000
MIGRATIONS: tuple[tuple[str, ...], ...] = ((
    """CREATE TABLE {schema}.conveyor_messages (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        queue text NOT NULL,
        priority smallint NOT NULL DEFAULT 0,
        state text NOT NULL CHECK (state IN ('ready', 'delayed', 'leased')),
        due float8,
        token text,
        deliveries integer NOT NULL DEFAULT 0,
        created float8 NOT NULL,
        body bytea NOT NULL) WITH (fillfactor = 80)""",
    """CREATE INDEX conveyor_messages_by_priority
        ON {schema}.conveyor_messages (queue, priority, seq) WHERE state = 'ready'""",
    """CREATE INDEX conveyor_messages_due
        ON {schema}.conveyor_messages (due) WHERE state <> 'ready'""",
    "CREATE TABLE {schema}.conveyor_queues (name text PRIMARY KEY)",
    """CREATE TABLE {schema}.conveyor_dead (
        n bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL,
        queue text NOT NULL,
        priority smallint NOT NULL DEFAULT 0,
        reason text NOT NULL,
        failed_at float8 NOT NULL,
        body bytea NOT NULL,
        UNIQUE (queue, id))""",
    "CREATE INDEX conveyor_dead_newest ON {schema}.conveyor_dead (queue, failed_at)",
    """CREATE TABLE {schema}.conveyor_keys (
        key text PRIMARY KEY,
        message_id text NOT NULL,
        expires_at float8 NOT NULL)""",
    "CREATE INDEX conveyor_keys_expiry ON {schema}.conveyor_keys (expires_at)",
    """CREATE TABLE {schema}.conveyor_revoked (
        task_id text PRIMARY KEY,
        expires_at float8 NOT NULL,
        terminate boolean NOT NULL DEFAULT false)""",
    """CREATE TABLE {schema}.conveyor_leases (
        name text PRIMARY KEY,
        holder text NOT NULL,
        expires_at float8 NOT NULL)""",
), (
    """CREATE TABLE {schema}.conveyor_rate (
        name text PRIMARY KEY,
        next_at float8 NOT NULL)""",
), (
    # Every message leaves two dead row versions (lease, ack): vacuum after a
    # fixed count of them, not after a fifth of a table whose live size is a
    # backlog that comes and goes, and at full speed (ADR 0019).
    f"""ALTER TABLE {{schema}}.conveyor_messages SET (
        autovacuum_vacuum_scale_factor = 0,
        autovacuum_vacuum_threshold = {AUTOVACUUM_THRESHOLD},
        autovacuum_vacuum_cost_delay = 0)""",
),)

# -- producing ---------------------------------------------------------------
# One statement: insert (an id already stored is skipped), remember the queue,
# and notify listeners of ready rows, all committed (or not) together.
ENQUEUE = """
    WITH ins AS (
        INSERT INTO {s}.conveyor_messages (id, queue, priority, state, due, created, body)
        SELECT * FROM unnest(%(ids)s::text[], %(queues)s::text[], %(priorities)s::smallint[],
                             %(states)s::text[], %(dues)s::float8[], %(created)s::float8[],
                             %(bodies)s::bytea[])
        ON CONFLICT (id) DO NOTHING
        RETURNING queue, state),
    reg AS (
        INSERT INTO {s}.conveyor_queues (name) SELECT DISTINCT unnest(%(queues)s::text[])
        ON CONFLICT DO NOTHING)
    SELECT pg_notify(%(channel)s, queue) FROM (SELECT DISTINCT queue FROM ins
                                              WHERE state = 'ready') ready"""
MESSAGE_EXISTS = "SELECT 1 FROM {s}.conveyor_messages WHERE id = %s"
# Inserts the key, or takes over an expired one; returns nothing when a live
# key belongs to another message (waiting for a racing producer to commit).
CLAIM_KEY = """
    INSERT INTO {s}.conveyor_keys AS k (key, message_id, expires_at) VALUES (%s, %s, %s)
    ON CONFLICT (key) DO UPDATE SET message_id = excluded.message_id,
                                    expires_at = excluded.expires_at
    WHERE k.expires_at <= %s
    RETURNING message_id"""
KEY_OWNER = "SELECT message_id FROM {s}.conveyor_keys WHERE key = %s"

# -- consuming ---------------------------------------------------------------
MAKE_DUE_READY = """
    UPDATE {s}.conveyor_messages SET state = 'ready', due = NULL, token = NULL,
                                     created = greatest(created, due)
    WHERE seq IN (SELECT seq FROM {s}.conveyor_messages
                  WHERE state <> 'ready' AND due <= %(now)s
                  ORDER BY due LIMIT 1000 FOR UPDATE SKIP LOCKED)"""
# The best ``count`` ready rows: one index walk per queue (priority, seq),
# merged by priority, then the queue's rank in the request, then FIFO.  The
# token is the reservation's random prefix plus the row's seq: unique per
# message and fresh per reservation.  Whether the task (the message id up to
# its first "~") is revoked comes back too, saving the worker a round trip.
LEASE = """
    UPDATE {s}.conveyor_messages m
    SET state = 'leased', token = %(prefix)s || '.' || m.seq, due = %(until)s,
        deliveries = m.deliveries + 1
    FROM (SELECT c.seq, q.rank
          FROM unnest(%(queues)s::text[]) WITH ORDINALITY AS q(name, rank)
          CROSS JOIN LATERAL (
              SELECT seq, priority FROM {s}.conveyor_messages
              WHERE state = 'ready' AND queue = q.name
              ORDER BY priority, seq LIMIT %(count)s
              FOR UPDATE SKIP LOCKED) c
          ORDER BY c.priority, q.rank, c.seq LIMIT %(count)s) pick
    WHERE m.seq = pick.seq
    RETURNING m.priority, pick.rank, m.seq, m.id, m.queue, m.body, m.deliveries, m.token,
        EXISTS (SELECT 1 FROM {s}.conveyor_revoked r
                WHERE r.task_id = split_part(m.id, '~', 1) AND r.expires_at > %(now)s)"""
NEXT_DUE = "SELECT min(due) FROM {s}.conveyor_messages WHERE state <> 'ready'"
# The three as one simple-protocol message, which the server runs as one
# implicit transaction and commits on its own once it has the whole message:
# a path cut at any byte leaves either nothing done or everything committed,
# never a transaction waiting for a COMMIT that will not come (ADR 0032).
RESERVE = f"{MAKE_DUE_READY};\n{LEASE};\n{NEXT_DUE}"

HELD = "id = %s AND token = %s AND state = 'leased'"
ACK = """
    DELETE FROM {s}.conveyor_messages
    WHERE state = 'leased' AND (id, token) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
    RETURNING token"""
REQUEUE = f"""
    WITH back AS (
        UPDATE {{s}}.conveyor_messages
        SET state = %s, due = %s, token = NULL, deliveries = deliveries - %s
        WHERE {HELD} RETURNING queue, state)
    SELECT count(*), count(pg_notify(%s, queue)) FILTER (WHERE state = 'ready') FROM back"""
EXTEND = """
    UPDATE {s}.conveyor_messages SET due = %s
    WHERE state = 'leased' AND (id, token) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
    RETURNING token"""
# Moves the held row to the dead letters, replacing an earlier letter of the id.
BURY = f"""
    WITH taken AS (DELETE FROM {{s}}.conveyor_messages WHERE {HELD}
                   RETURNING id, queue, priority, body)
    INSERT INTO {{s}}.conveyor_dead AS d (id, queue, priority, reason, failed_at, body)
    SELECT id, queue, priority, %s, %s, body FROM taken
    ON CONFLICT (queue, id) DO UPDATE SET priority = excluded.priority,
        reason = excluded.reason, failed_at = excluded.failed_at, body = excluded.body"""

# -- inspection and repair ---------------------------------------------------
ALL_QUEUES = "SELECT name FROM {s}.conveyor_queues ORDER BY name"
COUNT_BY_STATE = """
    SELECT queue, state, count(*), min(created) FROM {s}.conveyor_messages
    WHERE queue = ANY(%s) GROUP BY queue, state"""
COUNT_DEAD = """
    SELECT queue, count(*) FROM {s}.conveyor_dead WHERE queue = ANY(%s) GROUP BY queue"""
PURGE = """
    DELETE FROM {s}.conveyor_messages WHERE queue = %s AND state IN ('ready', 'delayed')"""
LIST_DEAD = """
    SELECT id, queue, body, reason, failed_at FROM {s}.conveyor_dead
    WHERE queue = %s ORDER BY failed_at DESC, n DESC LIMIT %s OFFSET %s"""
# ``%(ids)s`` NULL means every letter of the queue.
REPLAY_DEAD = """
    WITH taken AS (
        DELETE FROM {s}.conveyor_dead
        WHERE queue = %(queue)s AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))
        RETURNING id, queue, priority, body, failed_at, n),
    ins AS (
        INSERT INTO {s}.conveyor_messages (id, queue, priority, state, created, body)
        SELECT id, queue, priority, 'ready', %(now)s, body FROM taken ORDER BY failed_at, n
        ON CONFLICT (id) DO NOTHING RETURNING queue)
    SELECT (SELECT count(*) FROM taken),
           (SELECT count(pg_notify(%(channel)s, q)) FROM (SELECT DISTINCT queue AS q FROM ins) x)"""
DISCARD_DEAD = """
    DELETE FROM {s}.conveyor_dead
    WHERE queue = %(queue)s AND (%(ids)s::text[] IS NULL OR id = ANY(%(ids)s::text[]))"""

# -- control plane -----------------------------------------------------------
REVOKE = """
    INSERT INTO {s}.conveyor_revoked (task_id, expires_at, terminate)
    SELECT t, %s, %s FROM unnest(%s::text[]) AS t
    ON CONFLICT (task_id) DO UPDATE SET expires_at = excluded.expires_at,
                                        terminate = excluded.terminate"""
REVOKED = """
    SELECT task_id, terminate FROM {s}.conveyor_revoked
    WHERE task_id = ANY(%s) AND expires_at > %s"""
ACQUIRE_LEASE = """
    INSERT INTO {s}.conveyor_leases AS l (name, holder, expires_at) VALUES (%s, %s, %s)
    ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
    WHERE l.holder = excluded.holder OR l.expires_at <= %s"""
RELEASE_LEASE = "DELETE FROM {s}.conveyor_leases WHERE name = %s AND holder = %s"
LEASE_HOLDER = "SELECT holder FROM {s}.conveyor_leases WHERE name = %s AND expires_at > %s"
# Rows locked in name order, so two takers of overlapping names cannot deadlock.
RATE_LOCK = """
    INSERT INTO {s}.conveyor_rate (name, next_at) SELECT unnest(%s::text[]), 0
    ON CONFLICT (name) DO NOTHING"""
RATE_NEXT = """
    SELECT max(next_at) FROM (SELECT next_at FROM {s}.conveyor_rate WHERE name = ANY(%s)
                              ORDER BY name FOR UPDATE) AS held"""
RATE_TAKE = "UPDATE {s}.conveyor_rate SET next_at = %s WHERE name = %s"
PING = "SELECT 1"

HOUSEKEEPING = (
    "DELETE FROM {s}.conveyor_keys WHERE expires_at <= %s",
    "DELETE FROM {s}.conveyor_revoked WHERE expires_at <= %s",
    "DELETE FROM {s}.conveyor_leases WHERE expires_at <= %s",
)
HOUSEKEEPING_EVERY = 60.0
DEFAULT_IDEMPOTENCY_TTL = 86400.0
DEFAULT_POLL_INTERVAL = 1.0
OPTIONS = ("schema", "poll_interval", "vacuum_every")
URL_ONLY = ("pool_mode", "listen_url", "socket_timeout")  # every store reads them: in the URL
RETRIED = frozenset({"reserve", "list queues", "stats", "list dead letters",
                     "read revocations", "read a lease", "ping"})

_Conn = Any  # psycopg.Connection[Any]; psycopg is an optional dependency


class PostgresBroker(Broker):
    """The broker in PostgreSQL tables; see the module docstring for the layout."""

    def __init__(self, url: str, **options: object) -> None:
        _refuse_unknown(options)
        self.url = url
        parsed = parse_postgres_url(url, options.get("schema"))
        self._poll = _poll_interval(options.get("poll_interval", DEFAULT_POLL_INTERVAL))
        vacuum_every = _vacuum_every(options.get("vacuum_every", DEFAULT_VACUUM_EVERY))
        self._pool = Pool(parsed)
        self._schema = parsed.schema
        self.channel = f"conveyor_{parsed.schema}"[:63]
        self._sql: dict[str, str] = {}
        self._housekeeping_due = 0.0
        ensure_schema(self._pool, "broker", SCHEMA_VERSION, MIGRATIONS)
        self._listener = Listener(self._pool, self.channel)
        self.vacuum = Vacuum(self._pool, self.sql("{s}.conveyor_messages"), vacuum_every)

    def sql(self, template: str) -> str:
        """A statement with this broker's schema filled in."""
        found = self._sql.get(template)
        if found is None:
            found = self._sql[template] = template.replace("{s}", quoted(self._schema))
        return found

    def _run(self, action: str, work: Callable[[_Conn], Any], transaction: bool = False) -> Any:
        # Reads (and reserve, whose lease simply runs out if its answer was
        # lost) may be tried again on a fresh connection; writes are not.
        return self._pool.run(action, work, transaction, retry=action in RETRIED)

    # -- producing -------------------------------------------------------
    def enqueue(self, envelope: Envelope) -> str:
        return self.enqueue_many([envelope])[0]

    def enqueue_many(self, envelopes: Sequence[Envelope]) -> list[str]:
        if not envelopes:
            return []
        # All plain: one statement, atomic on its own; keys need a transaction.
        keyed = any(e.idempotency_key is not None for e in envelopes)
        return list(self._run("enqueue", lambda c: self.store(c, envelopes),
                              transaction=keyed))

    def store(self, conn: _Conn, envelopes: Sequence[Envelope]) -> list[str]:
        """Write ``envelopes`` on ``conn``, inside whatever transaction it is in.

        Plain envelopes go in one multi-row statement; keyed ones one by one,
        in order, each claiming its key first.
        """
        now = time.time()
        plain = [e for e in envelopes if e.idempotency_key is None]
        if len(plain) == len(envelopes):
            self._insert(conn, envelopes, now)
            return [e.id for e in envelopes]
        ids: list[str] = []
        for env in envelopes:
            if env.idempotency_key is None:
                self._insert(conn, [env], now)
                ids.append(env.id)
            else:
                ids.append(self._store_keyed(conn, env, now))
        self._housekeep(conn, now)
        return ids

    def store_in(self, conn: _Conn, envelopes: Sequence[Envelope]) -> list[str]:
        """Write ``envelopes`` on the caller's psycopg connection, in its transaction.

        Nothing is visible to workers (and no notification is sent) until the
        caller commits; a rollback leaves nothing queued.  Inside an open
        transaction this runs in a savepoint; on an idle connection it opens
        the transaction the caller will commit; on an autocommit connection
        it commits at once.
        """
        import psycopg

        if not isinstance(conn, psycopg.Connection):
            raise ConfigurationError(
                f"connection= takes a psycopg 3 connection, not {type(conn).__name__} "
                "(Celery's kombu connection argument has no counterpart here)")
        with errors(self._pool.options.address, "enqueue"):
            if not conn.autocommit and conn.info.transaction_status == IDLE:
                # psycopg's transaction() would begin *and commit* here: let the
                # statements open the caller's transaction instead.
                return self.store(conn, envelopes)
            with conn.transaction():
                return self.store(conn, envelopes)

    def _insert(self, conn: _Conn, envelopes: Sequence[Envelope], now: float) -> None:
        due = [e.eta if e.eta is not None and e.eta > now else None for e in envelopes]
        conn.execute(self.sql(ENQUEUE), {
            "ids": [e.id for e in envelopes],
            "queues": [e.queue for e in envelopes],
            "priorities": [e.priority for e in envelopes],
            "states": ["ready" if d is None else "delayed" for d in due],
            "dues": due,
            "created": [now] * len(envelopes),
            "bodies": [bytes(e.body) for e in envelopes],
            "channel": self.channel,
        })

    def _store_keyed(self, conn: _Conn, env: Envelope, now: float) -> str:
        if conn.execute(self.sql(MESSAGE_EXISTS), (env.id,)).fetchone() is not None:
            return env.id
        ttl = env.idempotency_ttl if env.idempotency_ttl is not None else DEFAULT_IDEMPOTENCY_TTL
        claimed = conn.execute(self.sql(CLAIM_KEY),
                               (env.idempotency_key, env.id, now + ttl, now)).fetchone()
        if claimed is None:
            owner = conn.execute(self.sql(KEY_OWNER), (env.idempotency_key,)).fetchone()
            return str(owner[0])
        self._insert(conn, [env], now)
        return env.id

    def _housekeep(self, conn: _Conn, now: float) -> None:
        if time.monotonic() < self._housekeeping_due:
            return
        self._housekeeping_due = time.monotonic() + HOUSEKEEPING_EVERY
        for statement in HOUSEKEEPING:
            conn.execute(self.sql(statement), (now,))

    # -- consuming -------------------------------------------------------
    def reserve(
        self, queues: Sequence[str], count: int, lease: float, timeout: float
    ) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if not names or count <= 0:
            time.sleep(max(timeout, 0.0))
            return []
        deadline = time.monotonic() + timeout
        while True:
            generation = self._listener.generation()  # before looking: no wake-up is missed
            got, next_due = self._run(
                "reserve", lambda c: self._reserve_once(c, names, count, lease))
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            wait = min(remaining, self._listener.poll_step(self._poll))
            if next_due is not None:
                wait = min(wait, max(next_due - time.time(), 0.0))
            self._listener.wait(generation, wait)

    def _reserve_once(
        self, conn: _Conn, names: list[str], count: int, lease: float
    ) -> tuple[list[Delivery], float | None]:
        from psycopg import ClientCursor

        now = time.time()
        # One round trip; the earliest due time is asked for whether or not
        # anything was leased.  Parameters are bound by the client: a message
        # with several statements cannot carry them (the price: the server
        # plans the statements each time instead of reusing a prepared plan).
        with ClientCursor(conn) as cur:
            cur.execute(self.sql(RESERVE), {
                "prefix": uuid.uuid4().hex, "until": now + lease, "queues": names,
                "count": count, "now": now})
            cur.nextset()  # past MAKE_DUE_READY's row count
            rows = cur.fetchall()
            cur.nextset()
            (next_due,) = cur.fetchone() or (None,)
        if not rows:
            return [], next_due
        rows.sort(key=lambda row: row[:3])  # RETURNING has no order: priority, rank, seq
        return [
            Delivery(id_, queue, bytes(body), deliveries, token, priority, bool(revoked))
            for priority, _, _, id_, queue, body, deliveries, token, revoked in rows
        ], None

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        if not deliveries:
            return []
        params = ([d.id for d in deliveries], [d.token for d in deliveries])
        done = self._run("ack", lambda c: {
            t for (t,) in c.execute(self.sql(ACK), params).fetchall()})
        self.vacuum.settled(len(done))
        return [d.token in done for d in deliveries]

    def requeue(self, delivery: Delivery, delay: float = 0.0, count: bool = False) -> bool:
        state, due = ("delayed", time.time() + delay) if delay > 0 else ("ready", None)
        params = (state, due, 0 if count else 1, delivery.id, delivery.token, self.channel)
        row = self._run("requeue", lambda c: c.execute(self.sql(REQUEUE), params).fetchone())
        self.vacuum.settled(int(row[0]))
        return bool(row[0])

    def dead_letter(self, delivery: Delivery, reason: str) -> bool:
        params = (delivery.id, delivery.token, reason, time.time())
        buried = bool(self._run(
            "dead-letter", lambda c: c.execute(self.sql(BURY), params).rowcount == 1))
        self.vacuum.settled(int(buried))
        return buried

    def extend(self, deliveries: Sequence[Delivery], lease: float) -> list[bool]:
        if not deliveries:
            return []
        params = (time.time() + lease, [d.id for d in deliveries],
                  [d.token for d in deliveries])
        held = self._run("extend leases", lambda c: {
            t for (t,) in c.execute(self.sql(EXTEND), params).fetchall()})
        return [d.token in held for d in deliveries]

    # -- inspection and repair --------------------------------------------
    def queues(self) -> list[str]:
        return self._run("list queues", lambda c: [
            str(name) for (name,) in c.execute(self.sql(ALL_QUEUES))])

    def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        if queues is not None and not queues:
            return []
        return list(self._run("stats", lambda c: self._stats(c, queues)))

    def _stats(self, conn: _Conn, queues: Sequence[str] | None) -> list[QueueStats]:
        names = ([str(n) for (n,) in conn.execute(self.sql(ALL_QUEUES))]
                 if queues is None else list(queues))
        counts: dict[tuple[str, str], int] = {}
        oldest: dict[str, float] = {}
        for q, s, n, first in conn.execute(self.sql(COUNT_BY_STATE), (names,)):
            counts[(q, s)] = n
            if s == "ready":
                oldest[q] = first
        dead = dict(conn.execute(self.sql(COUNT_DEAD), (names,)).fetchall())
        now = time.time()
        return [
            QueueStats(queue=name, ready=counts.get((name, "ready"), 0),
                       delayed=counts.get((name, "delayed"), 0),
                       inflight=counts.get((name, "leased"), 0), dead=dead.get(name, 0),
                       oldest_age=max(0.0, now - oldest[name]) if name in oldest else 0.0)
            for name in names
        ]

    def purge(self, queue: str) -> int:
        purged = int(self._run("purge", lambda c: c.execute(self.sql(PURGE), (queue,)).rowcount))
        self.vacuum.settled(purged)
        return purged

    def dead_letters(self, queue: str, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        return self._run("list dead letters", lambda c: [
            DeadLetter(id_, q, bytes(body), reason, failed_at)
            for id_, q, body, reason, failed_at in c.execute(
                self.sql(LIST_DEAD), (queue, limit, offset))])

    def replay_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        params = {"queue": queue, "ids": None if ids is None else list(ids),
                  "now": time.time(), "channel": self.channel}
        row = self._run("replay dead letters",
                        lambda c: c.execute(self.sql(REPLAY_DEAD), params).fetchone())
        return int(row[0])

    def discard_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        params = {"queue": queue, "ids": None if ids is None else list(ids)}
        return int(self._run("discard dead letters",
                             lambda c: c.execute(self.sql(DISCARD_DEAD), params).rowcount))

    # -- control plane ---------------------------------------------------
    def revoke(self, ids: Sequence[str], ttl: float, terminate: bool = False) -> None:
        now = time.time()

        def store(conn: _Conn) -> None:
            conn.execute(self.sql(REVOKE), (now + ttl, terminate, list(ids)))
            self._housekeep(conn, now)

        if ids:
            self._run("revoke", store, transaction=True)

    def revoked(self, ids: Sequence[str]) -> dict[str, bool]:
        if not ids:
            return {}
        params = (list(dict.fromkeys(ids)), time.time())
        return self._run("read revocations", lambda c: {
            str(t): bool(term) for t, term in c.execute(self.sql(REVOKED), params)})

    def acquire_lease(self, name: str, holder: str, ttl: float) -> bool:
        now = time.time()
        params = (name, holder, now + ttl, now)
        return bool(self._run("acquire a lease", lambda c: c.execute(
            self.sql(ACQUIRE_LEASE), params).rowcount == 1))

    def release_lease(self, name: str, holder: str) -> None:
        self._run("release a lease", lambda c: c.execute(self.sql(RELEASE_LEASE), (name, holder)))

    def lease_holder(self, name: str) -> str | None:
        row = self._run("read a lease", lambda c: c.execute(
            self.sql(LEASE_HOLDER), (name, time.time())).fetchone())
        return None if row is None else str(row[0])

    def take_rate_slot(self, limits: Sequence[tuple[str, float]], within: float) -> float:
        names = sorted({name for name, _ in limits})

        def take(c: _Conn) -> float:
            c.execute(self.sql(RATE_LOCK), (names,))
            row = c.execute(self.sql(RATE_NEXT), (names,)).fetchone()
            now = time.time()  # after the row locks: takers are serialised
            slot = max(now, float(row[0] or 0.0))
            if slot - now <= within:
                for name, interval in limits:
                    c.execute(self.sql(RATE_TAKE), (slot + interval, name))
            return slot - now

        return float(self._run("take a rate slot", take, transaction=True))

    def ping(self) -> bool:
        self._run("ping", lambda c: c.execute(PING).fetchone())
        return True

    def close(self) -> None:
        self._listener.stop()
        self.vacuum.join(timeout=5.0)
        self._pool.close()


def _refuse_unknown(options: dict[str, object]) -> None:
    unknown = sorted(set(options) - set(OPTIONS))
    in_url = [name for name in unknown if name in URL_ONLY]
    if in_url:
        raise ConfigurationError(
            f"broker_transport_options {', '.join(in_url)}: put it in the URL "
            f"(?{in_url[0]}=...), where the result, event and control stores opened "
            "from it see it too")
    if unknown:
        raise ConfigurationError(
            f"broker_transport_options {', '.join(unknown)}: not understood by the "
            f"PostgreSQL broker (it reads {', '.join(OPTIONS)})")


def _poll_interval(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = 0.0
    if not 0 < seconds <= 60:
        raise ConfigurationError(
            f"broker_transport_options poll_interval={value!r}: use seconds in (0, 60]")
    return seconds


def _vacuum_every(value: object) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit():
        raise ConfigurationError(
            f"broker_transport_options vacuum_every={value!r}: use a whole count of "
            "acknowledged messages (0: leave the table to autovacuum)")
    return int(text)
