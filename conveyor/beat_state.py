"""Beat's run history, kept beside the broker's data so every beat process shares it.

Whichever beat process leads, it must know when each entry last ran (so a
restart or a failover neither repeats nor forgets a tick) and when *any* beat
last ran (so ticks missed while none ran can follow ``beat_missed_policy``).
Both live where the broker keeps its data: the same SQLite file, the same Redis
database and key prefix, the same PostgreSQL schema
(``conveyor/beat_state_postgres.py``), or, for ``memory://``, a dict shared by
the process.

Times are stored as whole microseconds since the Unix epoch (UTC).  They are
exact: a tick one process derives from a stored ``last_run_at`` is identical,
to the microsecond, to the tick another process derives, and tick identities
(beat's idempotency keys) depend on that.  A float of seconds would round.

Every write only moves a time forward.  A leader that was paused (SIGSTOP, a
long GC, a frozen VM) and resumes after another took over cannot roll the
history back by recording an older tick late.

Storage layout
==============

SQLite (in the broker's file; component ``beat`` in ``conveyor_schema``)::

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

Redis (``P`` is the broker's key prefix, ``conveyor`` by default)::

    P:beat:last_run   hash   entry name -> last_run_us
    P:beat:runs       hash   entry name -> total_run_count
    P:beat:meta       hash   alive_at, cutoff -> microseconds
    P:beat:notes      hash   scheduler -> import path

None of these expire: one small record per entry name.
"""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from conveyor._amqp import is_amqp, not_in_rabbitmq
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["ALIVE_AT", "CUTOFF", "SCHEDULER", "BeatState", "EntryRuns", "open_beat_state"]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

ALIVE_AT = "alive_at"
CUTOFF = "cutoff"
SCHEDULER = "scheduler"


def to_micros(moment: datetime) -> int:
    """An aware datetime as whole microseconds since the epoch (exact, unlike a float)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"beat times must be aware datetimes, got naive {moment.isoformat()}")
    return (moment - EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    """The inverse of :func:`to_micros`, in UTC."""
    return EPOCH + timedelta(microseconds=int(micros))


@dataclass(frozen=True)
class EntryRuns:
    """What the store knows of one entry."""

    last_run_at: datetime
    total_run_count: int


class BeatState(abc.ABC):
    """The history store; one per process and broker URL, thread-safe."""

    # -- per entry -----------------------------------------------------------
    def last_run(self, name: str) -> datetime | None:
        """The tick ``name`` last ran for (aware UTC), or None if it never ran."""
        runs = self.runs([name]).get(name)
        return None if runs is None else runs.last_run_at

    @abc.abstractmethod
    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        """History of the given entries (all when None); entries that never ran are absent."""

    @abc.abstractmethod
    def record_run(self, name: str, run_at: datetime) -> bool:
        """Remember that ``name`` ran for the tick ``run_at``.

        Returns False, changing nothing, when a later tick is already recorded.
        """

    # -- beat as a whole -----------------------------------------------------
    def get(self, key: str) -> datetime | None:
        """``alive_at`` or ``cutoff``, or None if never written."""
        micros = self._get_meta(key)
        return None if micros is None else from_micros(micros)

    def advance(self, key: str, moment: datetime) -> None:
        """Set ``alive_at`` or ``cutoff`` to ``moment`` unless it already is later."""
        self._raise_meta(key, to_micros(moment))

    @abc.abstractmethod
    def _get_meta(self, key: str) -> int | None: ...

    @abc.abstractmethod
    def _raise_meta(self, key: str, micros: int) -> None: ...

    # -- notes: small facts about the running beat, last writer wins -----------
    @abc.abstractmethod
    def note(self, key: str) -> str | None:
        """A note such as ``scheduler``, or None if never written."""

    @abc.abstractmethod
    def set_note(self, key: str, value: str) -> None:
        """Write a note (the leader writes them when it takes the lease)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


# --------------------------------------------------------------------------- memory


class _MemoryData:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, tuple[int, int]] = {}
        self.meta: dict[str, int] = {}
        self.notes: dict[str, str] = {}


_MEMORY: dict[str, _MemoryData] = {}
_MEMORY_LOCK = threading.Lock()


class MemoryBeatState(BeatState):
    """For ``memory://`` brokers: shared by every beat in this process on the same URL."""

    def __init__(self, url: str) -> None:
        with _MEMORY_LOCK:
            self._data = _MEMORY.setdefault(url, _MemoryData())

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        with self._data.lock:
            found = self._data.runs if names is None else {
                n: self._data.runs[n] for n in names if n in self._data.runs}
            return {n: EntryRuns(from_micros(us), count) for n, (us, count) in found.items()}

    def record_run(self, name: str, run_at: datetime) -> bool:
        micros = to_micros(run_at)
        with self._data.lock:
            current = self._data.runs.get(name)
            if current is not None and current[0] >= micros:
                return False
            self._data.runs[name] = (micros, (current[1] if current else 0) + 1)
            return True

    def _get_meta(self, key: str) -> int | None:
        with self._data.lock:
            return self._data.meta.get(key)

    def _raise_meta(self, key: str, micros: int) -> None:
        with self._data.lock:
            self._data.meta[key] = max(micros, self._data.meta.get(key, micros))

    def note(self, key: str) -> str | None:
        with self._data.lock:
            return self._data.notes.get(key)

    def set_note(self, key: str, value: str) -> None:
        with self._data.lock:
            self._data.notes[key] = value


def reset_memory_beat_state() -> None:
    """Forget every in-process history (for test isolation)."""
    with _MEMORY_LOCK:
        _MEMORY.clear()


# --------------------------------------------------------------------------- SQLite

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


# --------------------------------------------------------------------------- Redis

# KEYS: the hash of times, then optionally a hash of counters.  ARGV: field, micros.
# Lua numbers are doubles, exact up to 2**53 microseconds (the year 2255).
_REDIS_RAISE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #KEYS > 1 then redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
return 1
"""


class RedisBeatState(BeatState):
    """Three hashes under the broker's key prefix (see the module docstring)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        from conveyor._redis import ClientHolder, parse_redis_url

        parsed = parse_redis_url(url, options)
        self._holder = ClientHolder(parsed)
        self._address = parsed.address
        prefix = parsed.prefix
        self._last_run = f"{prefix}:beat:last_run"
        self._counts = f"{prefix}:beat:runs"
        self._meta = f"{prefix}:beat:meta"
        self._notes = f"{prefix}:beat:notes"
        self._raise = self._holder.client.register_script(_REDIS_RAISE)

    def _errors(self, action: str) -> Any:
        from conveyor._redis import translate_errors
        from conveyor.exceptions import BrokerUnavailable

        return translate_errors(self._address, f"beat state {action}", BrokerUnavailable)

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        from conveyor._redis import retry_read

        with self._errors("read"):
            times, counts = retry_read(lambda: self._read_runs(names))
        return {
            name: EntryRuns(from_micros(int(us)), int(counts.get(name) or 0))
            for name, us in times.items()
            if us is not None
        }

    def _read_runs(self, names: list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
        from conveyor._redis import as_text

        pipe = self._holder.client.pipeline(transaction=False)
        if names is None:
            pipe.hgetall(self._last_run)
            pipe.hgetall(self._counts)
            times, counts = pipe.execute()
            return ({as_text(k): v for k, v in times.items()},
                    {as_text(k): v for k, v in counts.items()})
        pipe.hmget(self._last_run, names)
        pipe.hmget(self._counts, names)
        times, counts = pipe.execute()
        return dict(zip(names, times, strict=True)), dict(zip(names, counts, strict=True))

    def record_run(self, name: str, run_at: datetime) -> bool:
        with self._errors("write"):
            done = self._raise(keys=[self._last_run, self._counts],
                               args=[name, to_micros(run_at)], client=self._holder.client)
        return bool(done)

    def _get_meta(self, key: str) -> int | None:
        from conveyor._redis import retry_read

        with self._errors("read"):
            value = retry_read(lambda: self._holder.client.hget(self._meta, key))
        return None if value is None else int(value)

    def _raise_meta(self, key: str, micros: int) -> None:
        with self._errors("write"):
            self._raise(keys=[self._meta], args=[key, micros], client=self._holder.client)

    def note(self, key: str) -> str | None:
        from conveyor._redis import as_text, retry_read

        with self._errors("read"):
            value = retry_read(lambda: self._holder.client.hget(self._notes, key))
        return None if value is None else as_text(value)

    def set_note(self, key: str, value: str) -> None:
        with self._errors("write"):
            self._holder.client.hset(self._notes, key, value)

    def close(self) -> None:
        self._holder.close()


def open_beat_state(app: Conveyor) -> BeatState:
    """The history store beside ``app``'s broker (chosen by the broker URL's scheme)."""
    url = app.conf.broker_url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    options = dict(app.conf.broker_transport_options)
    if is_amqp(url):  # RabbitMQ keeps no records: use its side store (ADR 0016)
        state = app.conf.broker_options().get("state_url")
        if not state:
            raise not_in_rabbitmq("beat's run history")
        url, options = str(state), {}
        scheme = url.split("://", 1)[0].lower()
    if scheme == "memory":
        return MemoryBeatState(url)
    if scheme == "sqlite":
        return SQLiteBeatState(url, options)
    if scheme in ("redis", "rediss", "unix", "sentinel"):
        return RedisBeatState(url, options)
    if scheme in ("postgresql", "postgres"):
        from conveyor.beat_state_postgres import PostgresBeatState

        return PostgresBeatState(url, options)
    raise ConfigurationError(
        f"beat cannot keep its run history beside broker_url {url!r}: "
        "supported schemes are sqlite://, redis://, rediss://, unix://, postgresql:// and memory://"
    )
