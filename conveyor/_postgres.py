"""PostgreSQL plumbing shared by the stores that live in one database: URLs,
connections, errors and schema versions.

URLs are libpq's (``postgresql://user:password@host:port/dbname?sslmode=...``;
``postgres://`` is the same) plus one parameter of Conveyor's own,
``schema=NAME`` (default ``public``): every table lives in that schema, which
is created when missing, so several applications (or test runs) can share a
database without meeting.  Every other query parameter goes to libpq as is.

Connections: a small pool per process (psycopg 3, autocommit on; several
statements that must commit together run in an explicit transaction).  The
pool notices a fork and starts empty in the child: psycopg never closes a
connection it inherited (libpq's socket stays the parent's), so the parent
loses nothing.  A connection that failed is thrown away, not reused.

Errors: a connection that cannot be made or is lost mid-call raises
:class:`~conveyor.exceptions.BrokerUnavailable` naming the server without
its password.

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
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from conveyor import _redact as redact
from conveyor.exceptions import BrokerUnavailable, ConfigurationError

try:
    import psycopg
except ImportError:  # pragma: no cover - exercised only without the extra
    psycopg = None  # type: ignore[assignment]

log = logging.getLogger("conveyor.postgres")
T = TypeVar("T")
SCHEMES = ("postgresql", "postgres")
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
POOL_SIZE = 8


@dataclass(frozen=True, slots=True)
class PostgresOptions:
    """Where to connect (``conninfo`` has the password; never print it) and
    which schema holds the tables; ``address`` is safe to print."""

    conninfo: str
    schema: str
    address: str


def parse_postgres_url(url: str, schema: object = None) -> PostgresOptions:
    """Split Conveyor's ``schema`` parameter off a libpq URL.

    ``schema`` (from transport options) wins over the URL's when both are set.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in SCHEMES:
        raise ConfigurationError(f"{redact_url(url)!r} is not a postgresql:// URL")
    query = parse_qsl(parts.query, keep_blank_values=True)
    from_url = [v for k, v in query if k == "schema"]
    rest = [(k, v) for k, v in query if k != "schema"]
    name = str(schema) if schema is not None else (from_url[-1] if from_url else "public")
    if not _IDENTIFIER.match(name):
        raise ConfigurationError(
            f"PostgreSQL schema {name!r} (in {redact_url(url)!r}): use lower-case letters, "
            "digits and underscores, starting with a letter or underscore")
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    host = parts.hostname or "localhost"
    address = f"{host}:{parts.port or 5432}{parts.path or '/'}"
    return PostgresOptions(conninfo, name, address)


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
        self._idle: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def connect(self) -> psycopg.Connection[Any]:
        """A new connection of its own (the caller closes it)."""
        with errors(self.options.address, "connect"):
            return psycopg.connect(self.options.conninfo, autocommit=True,
                                   application_name="conveyor")

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = self._take()
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        self._give_back(conn)

    def run(self, action: str, work: Callable[[psycopg.Connection[Any]], T],
            transaction: bool = False, retry: bool = False) -> T:
        """``work(conn)`` on a pooled connection, in a transaction if asked.

        ``retry``: ``work`` may run twice (it reads, or repeating it is
        harmless), so a connection that went stale while idle (a server
        restart, a terminated backend) costs one more try on a new
        connection instead of an error.
        """
        try:
            return self._run_once(action, work, transaction)
        except BrokerUnavailable:
            if not retry:
                raise
        return self._run_once(action, work, transaction)

    def _run_once(self, action: str, work: Callable[[psycopg.Connection[Any]], T],
                  transaction: bool) -> T:
        with errors(self.options.address, action), self.connection() as conn:
            if not transaction:
                return work(conn)
            with conn.transaction():
                return work(conn)

    def _take(self) -> psycopg.Connection[Any]:
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = [], os.getpid()  # the parent's: leave them be
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed and not conn.broken:
                    return conn
        return self.connect()

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self._size and not conn.broken:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
        for conn in idle if mine else ():
            conn.close()


@contextmanager
def errors(address: str, action: str) -> Iterator[None]:
    """Turn a lost or refused connection into BrokerUnavailable, naming the server."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise BrokerUnavailable(
            f"PostgreSQL at {address}: {action} failed, the connection was refused or "
            f"lost ({_first_line(exc)})") from exc


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

    pool.run("create the schema", upgrade, transaction=True)


def quoted(identifier: str) -> str:
    """A checked identifier (see ``_IDENTIFIER``) in double quotes."""
    return f'"{identifier}"'


class Listener:
    """One connection per process that ``LISTEN``s and counts notifications.

    Waiters remember the count before they look for work and sleep until it
    changes; the thread starts on the first wait and restarts after a fork
    or a lost connection (waiters poll meanwhile).
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
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def generation(self) -> int:
        """The notification count, starting the listener first if needed."""
        self._start()
        with self._cond:
            return self._count

    def listening(self) -> bool:
        return self._ready.is_set()

    def wait(self, generation: int, seconds: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._count != generation, timeout=seconds)

    def _start(self) -> None:
        if self._closed or (self._pid == os.getpid() and self._thread is not None):
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
            self._ready.wait(2.0)  # LISTEN in place before the first look for work

    def _bump(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = self._pool.connect()
            except Exception as exc:
                log.warning("PostgreSQL: cannot listen (%s); polling", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                self._serve(conn)
                backoff = 0.1
            except Exception as exc:
                log.warning("PostgreSQL: lost the LISTEN connection (%s)", exc)
            finally:
                self._ready.clear()
                conn.close()

    def _serve(self, conn: psycopg.Connection[Any]) -> None:
        conn.execute(f"LISTEN {quoted(self._channel)}")
        self._ready.set()
        self._bump()  # anything sent while not listening: look again
        while not self._stopping.is_set():
            for _ in conn.notifies(timeout=1.0):
                self._bump()

    def stop(self) -> None:
        self._closed = True
        if self._pid == os.getpid():
            self._stopping.set()  # the thread closes its connection within a second
