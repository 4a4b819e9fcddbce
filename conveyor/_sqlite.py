"""SQLite plumbing shared by the SQLite broker and the SQLite result store.

Both usually live in one file (``sqlite:///conveyor.db`` is the default
broker, and the result backend defaults to the broker URL), opened by many
threads and several processes at once, so they follow one set of rules:

URLs
    ``sqlite:///relative.db`` is relative to the working directory when the
    URL is opened (resolved once, so a later ``chdir`` does not move the
    database); ``sqlite:////abs/path.db`` is absolute.  ``:memory:`` is
    refused: an in-memory database is private to one connection, so workers
    in other processes would never see the messages; ``memory://`` is the
    in-process backend for tests.  Query options: ``synchronous`` (below) and
    ``busy_timeout`` (seconds).

Connections
    One per thread (``threading.local``) and per process.  SQLite forbids
    using or even closing a connection inherited over ``fork()``: a child
    notices the new pid, parks the inherited objects where they are never
    garbage-collected (collection would close them), and opens its own.

Journal and durability
    WAL: readers never block the writer and the writer never blocks
    readers, which is what a queue polled by many consumers needs.
    ``synchronous=NORMAL`` does not fsync on every commit: a committed
    transaction survives the crash of any process (SIGKILL, OOM), but a
    power loss or kernel crash may roll back the last transactions committed
    before it; the file itself stays consistent.  Where losing those is not
    acceptable, ``?synchronous=FULL`` fsyncs the WAL at each commit, at a
    large cost in enqueue throughput.

Locking
    Every write transaction starts with ``BEGIN IMMEDIATE``: it takes the
    write lock before reading.  A deferred transaction that reads and then
    writes can fail with "database is locked" at once, when another process
    committed in between; an immediate one either gets the lock or fails
    before it has done anything, so it can simply be tried again.
    Conveyor waits for the lock itself rather than through SQLite's busy
    handler: that one sleeps 1, 2, 5, 10 ms ... between tries, while a
    transaction here holds the lock for 0.05-0.5 ms, so two worker processes
    on one file spent most of a collision asleep with the lock free.  Here
    a connection never waits inside SQLite (its busy timeout is 0); a busy
    attempt is rolled back and run again after 50 µs, doubling to 2 ms, with
    jitter, until ``busy_timeout`` seconds have passed since the first
    refusal; only then does the error reach the caller, as a
    :class:`BrokerError`.

Schema
    Each component creates its tables with ``CREATE TABLE IF NOT EXISTS``
    inside ``BEGIN IMMEDIATE`` on its first connection in a process, so
    processes starting together cannot trip over each other, and records
    its schema version in ``conveyor_schema (component PRIMARY KEY,
    version)``: a file written by a newer, incompatible Conveyor is refused
    instead of misread.

Polling
    SQLite has no notifications.  ``PRAGMA data_version`` changes when
    another connection commits and costs almost nothing, so waiters sleep
    with an adaptive backoff and look at it before running real queries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

from conveyor.exceptions import BrokerError, ConfigurationError

__all__ = [
    "DATA_VERSION",
    "HAS_RETURNING",
    "Backoff",
    "Database",
    "SQLiteOptions",
    "in_chunks",
    "parse_sqlite_url",
    "placeholders",
]

log = logging.getLogger("conveyor.sqlite")

T = TypeVar("T")

# ``UPDATE/DELETE ... RETURNING`` appeared in 3.35; older libraries (Debian 11
# ships 3.34) take a SELECT-then-write path inside the same transaction.
HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)
# Upserts (``ON CONFLICT ... DO``) are used throughout and have no cheap fallback.
MIN_SQLITE = (3, 24, 0)

DEFAULT_BUSY_TIMEOUT = 10.0
SYNCHRONOUS_LEVELS = ("NORMAL", "FULL", "EXTRA")
# Keep the WAL from growing without bound after a burst: it is truncated to
# this size at each checkpoint.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
# Page cache per connection, in KiB (SQLite's default is 2 MiB).  Random
# message ids make the id index's inserts touch pages all over it; a larger
# cache keeps a big backlog's index in memory (measured: enqueue_many about
# 20 % faster with a 100k backlog).  Allocated only as pages are touched.
CACHE_KIB = 8 * 1024
# Waiting for a lock another connection holds (see Locking above): the first
# pause and the longest, in seconds.
BUSY_FIRST_PAUSE = 0.00005
BUSY_MAX_PAUSE = 0.002
# Older SQLite builds allow at most 999 bound parameters per statement.
CHUNK = 500

_BUSY_CODES = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
_UNREADABLE_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB

# Connections inherited over fork: never used, never closed (see module docstring).
_INHERITED: list[sqlite3.Connection] = []

SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS conveyor_schema ("
    " component TEXT PRIMARY KEY,"
    " version INTEGER NOT NULL)"
)
SCHEMA_CLAIM = """
    INSERT INTO conveyor_schema (component, version) VALUES (?, ?) ON CONFLICT DO NOTHING"""
SCHEMA_VERSION = "SELECT version FROM conveyor_schema WHERE component = ?"
DATA_VERSION = "PRAGMA data_version"


@dataclass(frozen=True, slots=True)
class SQLiteOptions:
    """Where the database is and how to open it."""

    path: str
    synchronous: str = "NORMAL"
    busy_timeout: float = DEFAULT_BUSY_TIMEOUT


def parse_sqlite_url(url: str, **overrides: object) -> SQLiteOptions:
    """Read ``sqlite:///relative.db`` or ``sqlite:////abs.db?synchronous=FULL``.

    ``overrides`` (from ``broker_transport_options``) win over the query.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigurationError(f"{url!r} is not a sqlite:// URL")
    if parts.netloc:
        raise ConfigurationError(
            f"{url!r}: a SQLite URL has no host; use sqlite:///relative.db or "
            "sqlite:////absolute/path.db (three or four slashes)"
        )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if path in ("", ":memory:") or path.startswith("file::memory:"):
        raise ConfigurationError(
            f"{url!r}: an in-memory SQLite database is private to one connection, so "
            "workers in other processes would never see its messages; use memory:// "
            "for tests in one process, or a file such as sqlite:///conveyor.db"
        )
    settings: dict[str, object] = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    settings.update(overrides)
    synchronous = _synchronous(url, settings.pop("synchronous", "NORMAL"))
    busy_timeout = _seconds(url, settings.pop("busy_timeout", DEFAULT_BUSY_TIMEOUT))
    if settings:
        raise ConfigurationError(
            f"{url!r}: unknown SQLite option(s) {', '.join(sorted(settings))}; "
            "known: synchronous, busy_timeout"
        )
    return SQLiteOptions(os.path.abspath(path), synchronous, busy_timeout)


def _synchronous(url: str, value: object) -> str:
    level = str(value).upper()
    if level not in SYNCHRONOUS_LEVELS:
        raise ConfigurationError(
            f"{url!r}: synchronous={value!r}; use one of {', '.join(SYNCHRONOUS_LEVELS)}"
        )
    return level


def _seconds(url: str, value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigurationError(f"{url!r}: busy_timeout={value!r} is not a number of seconds")
    return seconds


def placeholders(count: int) -> str:
    """``?, ?, ?`` for an ``IN (...)`` list of ``count`` values."""
    return ", ".join("?" * count)


def in_chunks(values: Sequence[T], size: int = CHUNK) -> list[Sequence[T]]:
    """Split a parameter list so no statement binds too many values."""
    return [values[i:i + size] for i in range(0, len(values), size)]


class Backoff:
    """Sleep lengths that start short (low latency) and grow to ``cap`` (low load)."""

    def __init__(self, start: float, cap: float, factor: float = 1.5) -> None:
        self._delay = start
        self._cap = cap
        self._factor = factor

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * self._factor, self._cap)
        return delay


class _Local(threading.local):
    conn: sqlite3.Connection | None = None


class _ForkGuard:
    """Keeps ``fork()`` out of every SQLite call made by another thread.

    A process forked while one of its threads is inside SQLite's C library
    hands the child that library's mutexes locked, and the child hangs in its
    first ``sqlite3.connect``.  The prefork supervisor forks children while a
    control thread (and an embedded beat) make SQLite calls beside it, so
    every call holds this guard shared and every fork (``os.register_at_fork``)
    holds it alone: a fork waits for calls under way to end, calls wait for
    the fork.  Uncontended, it costs two lock round trips per SQLite call.
    """

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._active = 0
        self._forking = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._lock:
            while self._forking:
                self._lock.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._lock:
                self._active -= 1
                if not self._active:
                    self._lock.notify_all()

    def before_fork(self) -> None:
        self._lock.acquire()  # held through the fork: no new call starts
        self._forking = True
        while self._active:
            self._lock.wait()

    def after_fork(self) -> None:
        self._forking = False
        self._lock.notify_all()
        self._lock.release()


FORK_GUARD = _ForkGuard()
os.register_at_fork(before=FORK_GUARD.before_fork, after_in_parent=FORK_GUARD.after_fork,
                    after_in_child=FORK_GUARD.after_fork)


class Database:
    """Per-thread connections to one SQLite file, with transactions that retry.

    ``component`` names the owner (``broker``, ``results``) in the
    ``conveyor_schema`` table so both can share a file and each can tell a
    file written by a newer, incompatible Conveyor.
    """

    def __init__(
        self, options: SQLiteOptions, component: str, schema: Sequence[str], version: int
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigurationError(
                f"SQLite {sqlite3.sqlite_version} is too old; Conveyor needs 3.24 or newer"
            )
        self.options = options
        self.path = options.path
        self._component = component
        self._schema = tuple(schema)
        self._version = version
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = _Local()
        # Every connection this process opened, so close() can reach other threads'.
        self._open: list[tuple[weakref.ref[threading.Thread], sqlite3.Connection]] = []
        self._schema_pid = 0

    # -- connections -------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema ensured) on first use."""
        if self._pid != os.getpid():
            self._after_fork()
        conn = self._local.conn
        if conn is None:
            conn = self._guard(self._connect)
            self._local.conn = conn
            with self._lock:
                self._forget_dead_threads()
                self._open.append((weakref.ref(threading.current_thread()), conn))
        if self._schema_pid != self._pid:
            self._guard(lambda: self._ensure_schema(conn))
            self._schema_pid = self._pid
        return conn

    def _after_fork(self) -> None:
        # The parent's lock may have been held by a thread that does not exist
        # here, so it is replaced rather than acquired.
        self._lock = threading.Lock()
        _INHERITED.extend(conn for _, conn in self._open)
        self._open = []
        self._local = _Local()
        self._pid = os.getpid()

    def _forget_dead_threads(self) -> None:
        alive = []
        for ref, conn in self._open:
            thread = ref()
            if thread is not None and thread.is_alive():
                alive.append((ref, conn))
            else:
                conn.close()
        self._open = alive

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=0,  # busy: fail at once, _guard waits (see Locking above)
            isolation_level=None,  # transactions are explicit, see write()
            check_same_thread=False,  # only so close() can close other threads' connections
            cached_statements=256,
        )
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                log.warning("SQLite database %s could not switch to WAL (journal_mode=%s); "
                            "concurrent access will be slower", self.path, mode)
            conn.execute(f"PRAGMA synchronous = {self.options.synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        def create(c: sqlite3.Connection) -> int:
            c.execute(SCHEMA_TABLE)
            for statement in self._schema:
                c.execute(statement)
            c.execute(SCHEMA_CLAIM, (self._component, self._version))
            return int(c.execute(SCHEMA_VERSION, (self._component,)).fetchone()[0])

        found = self._transaction(conn, create, "BEGIN IMMEDIATE")
        if found > self._version:
            raise ConfigurationError(
                f"SQLite database {self.path} holds a {self._component} schema version "
                f"{found}, newer than this Conveyor understands ({self._version}); "
                "upgrade Conveyor or use another file"
            )

    def close(self) -> None:
        """Close this process's connections; threads reopen on next use."""
        if self._pid != os.getpid():
            self._after_fork()
            return
        with self._lock:
            for _, conn in self._open:
                conn.close()
            self._open = []
            self._local = _Local()
            self._schema_pid = 0

    # -- transactions ------------------------------------------------------
    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in a ``BEGIN IMMEDIATE`` transaction (re-run on lock errors)."""
        conn = self.connection()
        return self._guard(lambda: self._transaction(conn, work, "BEGIN IMMEDIATE"))

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run several reads against one snapshot."""
        conn = self.connection()
        return self._guard(lambda: self._transaction(conn, work, "BEGIN"))

    def query(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run one read statement in autocommit mode (no BEGIN/COMMIT round trips)."""
        conn = self.connection()
        return self._guard(lambda: work(conn))

    def write_one(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run one write statement in autocommit mode: it is its own transaction.

        Two statements fewer than :meth:`write` (no ``BEGIN IMMEDIATE``, no
        ``COMMIT``), for a write that is a single statement.  SQLite takes
        the write lock as the statement starts, before it reads anything, so
        it waits for the lock as ``BEGIN IMMEDIATE`` does.
        """
        conn = self.connection()
        return self._guard(lambda: work(conn))

    def data_version(self) -> int:
        """A number that changes whenever another connection commits."""
        return self.query(lambda c: int(c.execute(DATA_VERSION).fetchone()[0]))

    @staticmethod
    def _transaction(
        conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T], begin: str
    ) -> T:
        conn.execute(begin)
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _guard(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt``, again while the database is locked; translate SQLite errors.

        ``attempt`` is a whole transaction (or one autocommit statement): a
        busy one has been rolled back, so running it again is safe.
        """
        give_up = 0.0
        pause = BUSY_FIRST_PAUSE
        while True:
            try:
                with FORK_GUARD.shared():
                    return attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._error(exc) from exc
                now = time.monotonic()
                if not give_up:
                    give_up = now + self.options.busy_timeout
                elif now >= give_up:
                    raise self._error(exc) from exc
            except sqlite3.DatabaseError as exc:
                raise self._error(exc) from exc
            time.sleep(pause * (0.5 + random.random()))
            pause = min(pause * 2, BUSY_MAX_PAUSE)

    def _error(self, exc: sqlite3.Error) -> BrokerError:
        code = _error_code(exc)
        if code in _UNREADABLE_CODES:
            return BrokerError(
                f"SQLite database {self.path} is corrupt or not a database ({exc}); "
                "move it aside or point the URL at another file"
            )
        if "unable to open" in str(exc):
            return BrokerError(
                f"cannot open SQLite database {self.path} ({exc}); check that its "
                "directory exists and is writable"
            )
        if code in _BUSY_CODES:
            return BrokerError(
                f"SQLite database {self.path} stayed locked for more than "
                f"{self.options.busy_timeout:g} s ({exc})"
            )
        return BrokerError(f"SQLite database {self.path}: {exc}")


def _error_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF  # the primary code, without extended bits
    text = str(exc)
    if "locked" in text:
        return 5
    if "not a database" in text or "malformed" in text:
        return 26
    return None


def _is_busy(exc: sqlite3.Error) -> bool:
    return _error_code(exc) in _BUSY_CODES
