"""PostgreSQL plumbing shared by the stores that live in one database: URLs,
connections, errors and schema versions.

URLs are libpq's (``postgresql://user:password@host:port/dbname?sslmode=...``;
``postgres://`` is the same) plus three parameters of Conveyor's own, which
every store opened from the URL (broker, results, events, remote control,
beat) reads alike:

* ``schema=NAME`` (default ``public``): every table lives in that schema,
  which is created when missing, so several applications (or test runs) can
  share a database without meeting;
* ``pool_mode=session|transaction`` (default ``session``): ``transaction``
  says the URL goes through a pooler that hands out a server connection per
  transaction (PgBouncer's ``pool_mode = transaction``), so nothing may live
  in a session: statements are never prepared on the server, and ``LISTEN``
  never goes through this URL (docs/decisions/0018-postgres-behind-pgbouncer.md);
* ``listen_url=URL`` (percent-encoded): a direct connection, used only for
  the ``LISTEN`` connections; without it a ``transaction`` URL has none, and
  waiters poll;
* ``socket_timeout=SECONDS`` (default 10, a third of the default lease): the
  longest any call waits for the server's answer (see "Dead paths" below).

Every other query parameter goes to libpq as is; ``connect_timeout``
(libpq's: whole seconds, at least 2) defaults to 4 when the URL has none.

Connections: a small pool per process (psycopg 3, autocommit on; several
statements that must commit together run in an explicit transaction; no
session state: no ``SET``, no session advisory locks, no server-side cursors).
The pool notices a fork and starts empty in the child: psycopg never closes a
connection it inherited (libpq's socket stays the parent's), so the parent
loses nothing.  A connection that failed is thrown away, not reused, and so
is an idle one the server has written to: the server speaks to an idle
connection only to end it (a terminated backend, a shutdown), so a producer
after a restart gets a fresh connection instead of an error.  A connection
that breaks takes the idle ones of every pool of the process on that server
with it (the broker's, the result store's, ...): they share its path.

Dead paths: a connection that silently stopped answering (a NAT or firewall
dropped its state, a partitioned host: no RST, no FIN) would leave a call
blocked in a read forever, with its leases lapsing under it.  Every wait for
the server on a connection of the pool ends after ``socket_timeout``, which
throws the connection away (what the server does with a statement it may
already have is unknown, as for any lost connection); the ``LISTEN``
connection, which waits for notifications with no end, asks ``SELECT 1``
after each ``socket_timeout`` of silence.  Only VACUUM and schema creation,
which may rightly take long, wait up to :data:`PATIENT` seconds.

The server's side of a dead path: a backend never learns that its client is
gone while the path still acknowledges bytes (a stalled proxy or middlebox;
TCP keepalives and ``tcp_user_timeout`` see nothing wrong), so a transaction
cut off between two statements would hold its locks for as long as the socket
lives.  Two rules keep that bounded without any server or role setting:

* every transaction the pool runs starts with ``BEGIN; SET LOCAL
  idle_in_transaction_session_timeout`` in one message (``socket_timeout``, at
  least a second), so the server ends the session when the client goes quiet
  inside it;
* no statement is sent in pipeline mode: psycopg follows each pipeline
  ``Sync`` with a ``Flush``, and any message after the server's
  ReadyForQuery disarms ``idle_in_transaction_session_timeout`` until the next
  ``Sync`` (PostgreSQL 15 seen doing so), which would leave a cut-off
  pipelined transaction open for good.  A transaction that must take one round
  trip (the broker's reserve) is one simple-protocol message of several
  statements instead, which the server commits without waiting for the client.

Errors: a connection that cannot be made or is lost mid-call, a
statement the server cancelled (``statement_timeout``, ``lock_timeout``, a
deadlock), and a session the server ended inside a transaction (its client
was silent for the limit above), raise :class:`~conveyor.exceptions.BrokerUnavailable` naming the
server without its password; a prepared statement gone missing (a
transaction pooler the URL does not declare) raises a ``BrokerError`` that
says to add ``pool_mode=transaction``.

Schema versions: each component (``broker``, ...) records the version of
the tables it created in ``conveyor_schema (component PRIMARY KEY, version)``;
creating or upgrading runs under a transaction-scoped advisory lock, so
processes starting together do not race, and a database written by a newer,
incompatible Conveyor is refused with a clear error instead of being
misread.
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

from conveyor import _redact as redact
from conveyor.exceptions import BrokerError, BrokerUnavailable, ConfigurationError

try:
    import psycopg

    from conveyor._pg_bounded import BoundedConnection, NoAnswer
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("conveyor.postgres")
T = TypeVar("T")
SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
POOL_SIZE = 8
#: SQLSTATEs of a statement the server cancelled on a live connection: a
#: statement timeout, a lock timeout, a deadlock, a serialization failure.
CANCELLED = frozenset({"57014", "55P03", "40P01", "40001"})
#: The server ended the session: the client was silent inside a transaction
#: (idle_in_transaction_session_timeout, set by the pool; transaction_timeout).
SESSION_ENDED = frozenset({"25P03", "25P04"})
#: A prepared statement missing, or there already: the sessions moved under us.
PREPARED_LOST = frozenset({"26000", "42P05"})
POOL_MODES = ("session", "transaction")
OWN_PARAMETERS = ("schema", "pool_mode", "listen_url", "socket_timeout")  # never for libpq
DEFAULT_SOCKET_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 4  # libpq's connect_timeout: whole seconds, at least 2
PATIENT = 600.0  # seconds VACUUM and schema creation may wait for the server


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """Where to connect (``conninfo`` has the password; never print it), which
    schema holds the tables, and how (see the module docstring); the
    ``*address`` fields are safe to print.

    ``listen_conninfo`` is None when nothing may ``LISTEN``: a transaction
    pooler's URL without a ``listen_url``.
    """

    conninfo: str
    schema: str
    address: str
    pool_mode: str = "session"
    listen_conninfo: str | None = None
    listen_address: str = ""
    socket_timeout: float = DEFAULT_SOCKET_TIMEOUT

    @property
    def prepares(self) -> bool:
        """Whether psycopg may prepare statements (which live in a session)."""
        return self.pool_mode != "transaction"


def parse_postgres_url(url: str, schema: object = None) -> PostgresOptions:
    """Split Conveyor's own parameters off a libpq URL (see the module docstring).

    ``schema`` (from transport options) wins over the URL's when both are set.
    """
    parts = _split(url, "")
    query = parse_qsl(parts.query, keep_blank_values=True)
    own = {k: v for k, v in query if k in OWN_PARAMETERS}
    name = str(schema) if schema is not None else own.get("schema", "public")
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(
            f"PostgreSQL schema {name!r} (in {redact_url(url)!r}): use lower-case letters, "
            "digits and underscores, starting with a letter or underscore")
    mode = _pool_mode(own.get("pool_mode", "session"), url)
    conninfo, address = _conninfo(parts, [(k, v) for k, v in query if k not in own])
    listen: str | None = conninfo
    listen_address = address
    if "listen_url" in own:
        listen, listen_address = _listen_conninfo(own["listen_url"], url)
    elif mode == "transaction":
        listen = None
    return PostgresOptions(conninfo, name, address, mode, listen, listen_address,
                           _socket_timeout(own.get("socket_timeout"), url))


def _split(url: str, what: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigurationError(f"{what}{redact_url(url)!r} is not a postgresql:// URL")
    return parts


def _conninfo(parts: SplitResult, query: list[tuple[str, str]]) -> tuple[str, str]:
    """libpq's URL for ``parts`` with ``query``, and the address to print; a connect
    is bounded (libpq's default is to wait for ever)."""
    if not any(key == "connect_timeout" for key, _ in query):
        query = [*query, ("connect_timeout", str(DEFAULT_CONNECT_TIMEOUT))]
    # quote, not quote_plus: libpq reads a "+" as itself, never as a space.
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path,
                           urlencode(query, quote_via=quote), ""))
    address = f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"
    return conninfo, address


def _socket_timeout(value: str | None, url: str) -> float:
    if value is None:
        return DEFAULT_SOCKET_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigurationError(
            f"socket_timeout={value!r} in {redact_url(url)!r}: use seconds above 0 (at most "
            "a third of broker_lease_timeout; docs/operations.md)")
    return seconds


def _pool_mode(value: str, url: str) -> str:
    if value in POOL_MODES:
        return value
    why = (" (statement pooling cannot run the transactions Conveyor needs)"
           if value == "statement" else "")
    raise ConfigurationError(
        f"pool_mode={value!r} in {redact_url(url)!r}: use session (a direct connection or "
        f"session pooling) or transaction (PgBouncer's transaction pooling){why}")


def _listen_conninfo(listen_url: str, url: str) -> tuple[str, str]:
    """The direct connection ``LISTEN`` uses; Conveyor's own parameters make no
    sense there (the main URL's apply), so they are refused, not ignored."""
    parts = _split(listen_url, "listen_url ")
    query = parse_qsl(parts.query, keep_blank_values=True)
    stray = sorted({k for k, _ in query if k in OWN_PARAMETERS})
    if stray:
        raise ConfigurationError(
            f"listen_url in {redact_url(url)!r} carries {', '.join(stray)}: set them on "
            "the main URL; listen_url only says where to LISTEN")
    return _conninfo(parts, query)


def redact_url(url: str) -> str:
    """The URL without its password (or secret query values), for errors and logs."""
    return redact.url(url)


def require_psycopg() -> None:
    if psycopg is None:
        raise ConfigurationError(
            "a postgresql:// URL needs psycopg 3: pip install 'conveyor[postgres]'")


class Pool:
    """A few autocommit connections, reused per process; see the module docstring."""

    def __init__(self, options: PostgresOptions, size: int = POOL_SIZE) -> None:
        require_psycopg()
        self.options = options
        self._size = size
        self._idle: list[BoundedConnection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        with _PATHS_LOCK:
            _PATHS.setdefault(options.address, weakref.WeakSet()).add(self)

    def connect(self) -> BoundedConnection:
        """A new connection of its own (the caller closes it)."""
        with errors(self.options.address, "connect"):
            # prepare_threshold=None: a prepared statement lives in one server
            # session, which a transaction pooler does not keep for us.
            extra = {} if self.options.prepares else {"prepare_threshold": None}
            conn = BoundedConnection.connect(self.options.conninfo, autocommit=True,
                                             application_name="conveyor", **extra)
        conn.answer_within = self.options.socket_timeout
        return conn

    def connect_listener(self) -> BoundedConnection:
        """A new direct connection for ``LISTEN`` (the caller closes it)."""
        if self.options.listen_conninfo is None:
            raise ConfigurationError("pool_mode=transaction without listen_url: no LISTEN")
        with errors(self.options.listen_address, "listen"):
            conn = BoundedConnection.connect(self.options.listen_conninfo, autocommit=True,
                                             application_name="conveyor")
        conn.answer_within = self.options.socket_timeout
        return conn

    @contextmanager
    def connection(self) -> Iterator[BoundedConnection]:
        conn = self._take()
        try:
            yield conn
        except BaseException:
            if conn.broken:
                _drop_idle_on(self.options.address)  # gone with it: see _PATHS
            conn.close()
            raise
        self._give_back(conn)

    def run(self, action: str, work: Callable[[psycopg.Connection[Any]], T],
            transaction: bool = False, retry: bool = False, patient: bool = False) -> T:
        """``work(conn)`` on a pooled connection, in a transaction if asked.

        ``retry``: ``work`` may run twice (it reads, or repeating it is
        harmless), so a connection that went stale while idle (a server
        restart, a terminated backend, a path that died while it was idle)
        costs one more try on a new connection instead of an error; on a
        path that is dead now, that try ends within ``connect_timeout``.
        ``patient``: ``work`` may rightly run long
        (VACUUM, schema changes behind a lock), so it waits up to
        :data:`PATIENT` seconds instead of ``socket_timeout``.
        """
        try:
            return self._run_once(action, work, transaction, patient)
        except BrokerUnavailable:
            if not retry:
                raise
        return self._run_once(action, work, transaction, patient)

    def _run_once(self, action: str, work: Callable[[psycopg.Connection[Any]], T],
                  transaction: bool, patient: bool) -> T:
        with errors(self.options.address, action), self.connection() as conn:
            if patient:
                conn.answer_within = max(PATIENT, self.options.socket_timeout)
            try:
                if not transaction:
                    return work(conn)
                # Not psycopg's transaction(): the limit must go in BEGIN's own message.
                conn.execute(begin_bounded(self.options.socket_timeout), prepare=False)
                result = work(conn)
                conn.commit()
                return result  # on an error, connection() closes the connection instead
            finally:
                conn.answer_within = self.options.socket_timeout

    def _take(self) -> BoundedConnection:
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()  # the parent's: leave them be
            while self._idle:
                conn = self._idle.pop()
                if _usable(conn):
                    return conn
                conn.close()
        return self.connect()

    def _give_back(self, conn: BoundedConnection) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._size and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    def _drop_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
        for conn in idle if mine else ():
            conn.close()

    def close(self) -> None:
        self._drop_idle()


IDLE_IN_TRANSACTION_FLOOR = 1.0  # seconds: a live client's pause between statements


def begin_bounded(socket_timeout: float) -> str:
    """``BEGIN`` and, in the same message, how long the server lets the
    transaction wait for its client's next statement (see "Dead paths" in the
    module docstring): ``socket_timeout``, the client's own patience, and at
    least :data:`IDLE_IN_TRANSACTION_FLOOR`."""
    limit = round(max(IDLE_IN_TRANSACTION_FLOOR, socket_timeout) * 1000)
    return f"BEGIN; SET LOCAL idle_in_transaction_session_timeout = {limit}"


# Every pool of this process by server address.  A connection that broke (the
# server went away, or the path to it died) takes the idle connections of every
# pool on that server with it, the other stores' too: they share its fate, and
# after a dead path heals each would otherwise cost a socket_timeout at its first
# use, failing a write (a result, an ack) on a task that then runs again.
_PATHS: dict[str, weakref.WeakSet[Pool]] = {}
_PATHS_LOCK = threading.Lock()


def _drop_idle_on(address: str) -> None:
    with _PATHS_LOCK:
        pools = list(_PATHS.get(address, ()))
    for pool in pools:
        pool._drop_idle()


def _usable(conn: psycopg.Connection[Any]) -> bool:
    """An idle connection that is still open and the server has not written to.

    The server writes to an idle pooled connection only to end it (``FATAL:
    terminating connection ...`` before a shutdown or ``pg_terminate_backend``,
    or the socket's end), so a readable socket means a dead connection; the
    check is a zero-timeout poll, no round trip.
    """
    if conn.closed or conn.broken:
        return False
    poller = select.poll()
    poller.register(conn.pgconn.socket, select.POLLIN)
    return not poller.poll(0)


@contextmanager
def errors(address: str, action: str) -> Iterator[None]:
    """Turn a lost or refused connection into BrokerUnavailable, naming the server."""
    try:
        yield
    except psycopg.OperationalError as exc:
        why = ("the server cancelled the statement" if exc.sqlstate in CANCELLED
               else "the server did not answer: a dead path or a stalled server"
               if isinstance(exc, NoAnswer) else "the connection was refused or lost")
        raise BrokerUnavailable(
            f"PostgreSQL at {address}: {action} failed, {why} ({_first_line(exc)})") from exc
    except psycopg.InternalError as exc:
        if exc.sqlstate not in SESSION_ENDED:
            raise
        raise BrokerUnavailable(
            f"PostgreSQL at {address}: {action} failed, the server ended a transaction "
            f"left waiting for its client ({_first_line(exc)})") from exc
    except psycopg.ProgrammingError as exc:
        if exc.sqlstate not in PREPARED_LOST:
            raise
        raise BrokerError(
            f"PostgreSQL at {address}: {action} failed ({_first_line(exc)}); a pooler in "
            "transaction mode (PgBouncer's pool_mode = transaction) sits between Conveyor "
            "and the server: add pool_mode=transaction to the URL") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return type(exc).__name__
    # libpq quotes conninfo as key=value pairs, which redact.text leaves alone.
    return re.sub(r"password=\S+", "password=***", redact.text(text[0]))


SCHEMA_TABLE = """CREATE TABLE IF NOT EXISTS {schema}.conveyor_schema (
    component text PRIMARY KEY,
    version integer NOT NULL)"""
SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('conveyor_schema.' || %s))"
SCHEMA_FOUND = "SELECT version FROM {schema}.conveyor_schema WHERE component = %s"
SCHEMA_SET = """
    INSERT INTO {schema}.conveyor_schema (component, version) VALUES (%s, %s)
    ON CONFLICT (component) DO UPDATE SET version = excluded.version"""


def ensure_schema(pool: Pool, component: str, version: int,
                  migrations: Sequence[Sequence[str]]) -> None:
    """Create or upgrade ``component``'s tables: ``migrations[i]`` brings v``i`` to v``i+1``.

    Statements are templates with ``{schema}`` for the quoted schema name.
    """
    schema = quoted(pool.options.schema)

    def upgrade(conn: psycopg.Connection[Any]) -> None:
        # A process paused or cut off while it holds the schema lock stalls every
        # other process's start only until the server ends its session (the
        # pool's idle-in-transaction limit, see "Dead paths").
        conn.execute(SCHEMA_LOCK, (pool.options.schema,))
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(SCHEMA_TABLE.format(schema=schema))
        row = conn.execute(SCHEMA_FOUND.format(schema=schema),
                           (component,)).fetchone()
        found = 0 if row is None else int(row[0])
        if found > version:
            raise ConfigurationError(
                f"PostgreSQL at {pool.options.address} holds a {component} schema version "
                f"{found} in schema {pool.options.schema!r}, newer than this Conveyor "
                f"understands ({version}); upgrade Conveyor")
        for step in migrations[found:version]:
            for statement in step:
                conn.execute(statement.format(schema=schema))
        if found != version:
            conn.execute(SCHEMA_SET.format(schema=schema),
                         (component, version))

    pool.run("create the schema", upgrade, transaction=True, patient=True)


def quoted(identifier: str) -> str:
    """A checked identifier (see ``_IDENTIFIER``) in double quotes."""
    return f'"{identifier}"'


RECONNECT_STEP = 0.05  # seconds between looks while the LISTEN connection is being made
_TOLD_NO_LISTEN: set[tuple[int, str]] = set()  # (pid, address): said once per process


class Listener:
    """One connection per process that ``LISTEN``s and counts notifications.

    Waiters remember the count before they look for work and sleep until it
    changes, or for :meth:`poll_step`; the thread starts on the first wait and
    restarts after a fork or a lost connection.  While it makes its
    connection, waiters look again every :data:`RECONNECT_STEP`; when it
    cannot (the server is down, or ``listen_url`` unreachable) it says so in
    one log line per outage and waiters poll at their idle step until it is
    back.  A ``pool_mode=transaction`` URL without ``listen_url`` has no
    listening connection at all: one log line per process, and waiters poll.
    """

    def __init__(self, pool: Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._pid = -1
        self._closed = False
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._ready = threading.Event()
        self._failing = threading.Event()
        self._answered = threading.Event()  # ready or failing: the first wait is over
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._pool.options.listen_conninfo is not None

    def generation(self) -> int:
        """The notification count, starting the listener first if needed."""
        self._start()
        with self._cond:
            return self._count

    def listening(self) -> bool:
        return self._ready.is_set()

    def poll_step(self, idle: float) -> float:
        """How long a waiter may sleep before looking again (see the class docstring)."""
        if self._ready.is_set() or self._failing.is_set() or not self.enabled:
            return idle
        return RECONNECT_STEP

    def wait(self, generation: int, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._count != generation, timeout=seconds)

    def _start(self) -> None:
        if self._closed or (self._pid == os.getpid() and self._thread is not None):
            return
        if not self.enabled:
            _tell_no_listen(self._pool.options.address)
            return
        with self._cond:
            if self._pid != os.getpid():
                self._reset()
                self._pid = os.getpid()
            started = self._thread is None
            if started:
                self._thread = threading.Thread(
                    target=self._listen, name="conveyor-pg-listen", daemon=True)
                self._thread.start()
        if started:
            self._answered.wait(2.0)  # LISTEN in place before the first look for work

    def _bump(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            if self._listen_once():
                backoff = 0.1  # it listened, then lost the connection: make it again now
                continue
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, 5.0)

    def _listen_once(self) -> bool:
        """Connect, LISTEN and count notifications until stopped or lost; whether it
        got as far as listening."""
        try:
            conn = self._pool.connect_listener()
        except Exception as exc:
            self._failed(exc)
            return False
        try:
            self._serve(conn)
        except Exception as exc:
            if not self._ready.is_set():
                self._failed(exc)
                return False
            log.warning("PostgreSQL: lost the LISTEN connection (%s); making it again", exc)
        finally:
            self._ready.clear()
            conn.close()
        return True

    def _failed(self, exc: Exception) -> None:
        """Say once per outage that nothing listens; waiters poll meanwhile."""
        if not self._failing.is_set():
            log.warning("PostgreSQL: cannot LISTEN (%s); waiters poll until it can", exc)
        self._failing.set()
        self._answered.set()

    def _serve(self, conn: BoundedConnection) -> None:
        with errors(self._pool.options.listen_address, "LISTEN"):
            conn.execute(f"LISTEN {quoted(self._channel)}")
            if self._failing.is_set():
                log.info("PostgreSQL at %s: listening again", self._pool.options.listen_address)
                self._failing.clear()
            self._ready.set()
            self._answered.set()
            self._bump()  # anything sent while not listening: look again
            heard = time.monotonic()
            while not self._stopping.is_set():
                if self._notified(conn):
                    heard = time.monotonic()
                elif time.monotonic() - heard >= max(1.0, conn.answer_within or 0.0):
                    # Silence may be a dead path, which would leave waiters polling
                    # for good: a question of our own ends within socket_timeout.
                    conn.execute("SELECT 1")
                    heard = time.monotonic()

    def _notified(self, conn: BoundedConnection) -> bool:
        """Wait up to a second for notifications; whether any came."""
        within, conn.answer_within = conn.answer_within, None  # waiting is the point here
        try:
            got = False
            for _ in conn.notifies(timeout=1.0):
                self._bump()
                got = True
            return got
        finally:
            conn.answer_within = within

    def stop(self) -> None:
        self._closed = True
        if self._pid == os.getpid():
            self._stopping.set()  # the thread closes its connection within a second


def _tell_no_listen(address: str) -> None:
    """One log line per process: without ``LISTEN`` waits poll (see :class:`Listener`)."""
    key = (os.getpid(), address)
    if key in _TOLD_NO_LISTEN:
        return
    _TOLD_NO_LISTEN.add(key)
    log.warning("PostgreSQL at %s: pool_mode=transaction and no listen_url, so nothing "
                "LISTENs: waiting workers and result waits poll (the broker every "
                "poll_interval) instead of waking on NOTIFY", address)
