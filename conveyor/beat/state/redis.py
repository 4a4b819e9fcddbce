"""Beat's run history in the Redis broker's database, under its key prefix.

``P`` is the broker's key prefix, ``conveyor`` by default; what each record
means is in ``base.py``::

    P:beat:last_run   hash   entry name -> last_run_us
    P:beat:runs       hash   entry name -> total_run_count
    P:beat:meta       hash   alive_at, cutoff -> microseconds
    P:beat:notes      hash   scheduler -> import path

Each write of a time is one Lua script that refuses an older one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from conveyor._lua import LuaScript, run
from conveyor.beat.state.base import BeatState, EntryRuns, from_micros, to_micros

__all__ = ["RedisBeatState"]

# KEYS: the hash of times, then optionally a hash of counters.  ARGV: field, micros.
# Lua numbers are doubles, exact up to 2**53 microseconds (the year 2255).
_REDIS_RAISE = LuaScript("""
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and tonumber(current) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if #KEYS > 1 then redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
return 1
""")


class RedisBeatState(BeatState):
    """Three hashes under the broker's key prefix (see the module docstring)."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        from conveyor._redis import ClientHolder, parse_redis_url
        from conveyor._redis_options import connection_options

        # The broker's connection options and prefix, read as the broker reads them.
        parsed = parse_redis_url(url, connection_options(options or {}))
        self._holder = ClientHolder(parsed)
        self._address = parsed.address
        prefix = parsed.prefix
        self._last_run = f"{prefix}:beat:last_run"
        self._counts = f"{prefix}:beat:runs"
        self._meta = f"{prefix}:beat:meta"
        self._notes = f"{prefix}:beat:notes"

    def _errors(self, action: str) -> Any:
        from conveyor._redis import translate_errors
        from conveyor.exceptions import BrokerUnavailable

        return translate_errors(self._address, f"beat state {action}", BrokerUnavailable)

    def runs(self, names: list[str] | None = None) -> dict[str, EntryRuns]:
        from conveyor._redis import retry_read

        if names is not None and not names:
            return {}  # HMGET with no fields is a Redis error
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
            done = run(self._holder.client, _REDIS_RAISE, [self._last_run, self._counts],
                       [name, to_micros(run_at)])
        return bool(done)

    def _get_meta(self, key: str) -> int | None:
        from conveyor._redis import retry_read

        with self._errors("read"):
            value = retry_read(lambda: self._holder.client.hget(self._meta, key))
        return None if value is None else int(value)

    def _raise_meta(self, key: str, micros: int) -> None:
        with self._errors("write"):
            run(self._holder.client, _REDIS_RAISE, [self._meta], [key, micros])

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

