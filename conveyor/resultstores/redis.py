"""Results in Redis: one key per task, a short-lived list to wake waiters.

Key layout
==========

``P`` is the key prefix (``?prefix=`` in the URL, default ``conveyor``).

``P:result:{task_id}`` (string)
    ``state`` + ``\\n`` + payload.  Written by :meth:`set` (workers), deleted by
    :meth:`forget`; expires after the ``ttl`` of the last write.
``P:result-notify:{task_id}`` (list of one value)
    The stored value of a ready state (SUCCESS, FAILURE, REVOKED), pushed by
    the same script that writes it, for waiters blocked on the list.  Expires
    after ``_NOTIFY_TTL_MS`` (or the result's ``ttl`` if that is shorter);
    deleted by every write of a state that is not ready and by :meth:`forget`,
    so it never announces a value the result key no longer holds.
``P:group:{group_id}`` (string)
    A group's description, from :meth:`save_group`; expires after its ``ttl``.
``P:chord:{chord_id}:parts`` (hash)
    Header index -> payload, from :meth:`chord_add` (or
    :meth:`set_many_fenced_and_join`, with the header's result); expires after its ``ttl``
    (kept after the chord fires, so the completer's repeat gets them again;
    deleted when :meth:`chord_fail` closes the chord).
``P:chord:{chord_id}:done`` (string)
    ``fired:{index}`` once the chord fired (``index`` completed the join;
    ``1`` as earlier versions wrote it: fired, completer unknown), ``failed`` once
    :meth:`chord_fail` closed it; whoever sets it first wins (both scripts
    check it), so a chord fires or fails once.  Expires after its ``ttl``,
    with the parts.

One string per result makes :meth:`get` one ``GET`` and :meth:`get_many` one
``MGET``; the state is the text before the first newline (state names have
none), so no decoding of the payload is needed to know whether it is ready.
Redis expires everything itself, so :meth:`cleanup` has nothing to do.  None of
these names clash with the broker's (``conveyor.brokers.redis``), so both can
share one database and prefix.

Waiting
=======

:meth:`wait` does not poll and needs no helper thread.  A ready-state write
runs one script that ``SET``s the result key and replaces the notify list with
the same value (``RPUSH`` + ``PEXPIRE``, and ``LTRIM`` to the newest if a value
was already there: one round trip, the value sent once).  A waiter first
``GET``s the result key (a result that is already there costs that one
command), then blocks in its own thread on
``BRPOPLPUSH notify notify``: the pop moves the value back onto the same
list, so the list is never emptied and Redis serves *every* client blocked on
it, in this process or any other, with one push.  A write that lands between
the ``GET`` and the block is still found, because the list outlives it by
``_NOTIFY_TTL_MS``.  The block lasts at most ``_BLOCK_SLICE`` (and less than
the socket timeout) before the waiter reads the result key again, which
bounds the wait of a waiter that was descheduled for longer than the list
lives.  Each blocked waiter holds one pooled connection for the duration.

A waiter on a task its own process sent moments ago (``.delay(...).get()``)
skips the ``GET`` and blocks at once (:meth:`RedisResultStore.wait_for_new`,
ADR 0037): any result of that task was written since the send, so its
notify list is still there to answer.

If Redis goes away while a waiter blocks, the waiter retries with capped,
jittered backoff until its timeout, then reports the outage as a
:class:`~conveyor.exceptions.ResultError`.  Needs Redis 6.0+ (fractional
blocking timeouts).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from conveyor._lua import LuaScript, run
from conveyor._redis import (
    CONNECTION_ERRORS,
    Backoff,
    ClientHolder,
    RedisOptions,
    as_bytes,
    call,
    parse_redis_url,
    retry_read,
    translate_errors,
)
from conveyor.exceptions import ConfigurationError, ResultError
from conveyor.resultstores.base import (
    FencedWrite,
    JoinPart,
    ResultStore,
    Stored,
    Written,
    deadline_after,
)
from conveyor.resultstores.record import Attempt
from conveyor.states import READY_STATES

log = logging.getLogger("conveyor.resultstores.redis")

# How one result is stored, shared by the write scripts: SET the result key,
# then replace the notify list (a ready state leaves its value there, alone,
# for waiters; any other state deletes it).  notify_px '0' = not ready.
_STORE = """
local function store(key, notify, value, px, notify_px)
  redis.call('SET', key, value, 'PX', px)
  if notify_px == '0' then
    redis.call('DEL', notify)
  else
    if redis.call('RPUSH', notify, value) > 1 then redis.call('LTRIM', notify, -1, -1) end
    redis.call('PEXPIRE', notify, notify_px)
  end
end
"""

# set: KEYS result key, notify key; ARGV value, px, notify_px.
_SET = LuaScript(_STORE + """
store(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
""")

# Whether the record stored at `key` was written by a later run of the same
# task call than (sent, retries, deliveries): Attempt.superseded_by, in Lua
# (docs/decisions/0004).  A record without an attempt never blocks a write.
_FENCE = """
local function superseded(key, sent, retries, deliveries)
  local stored = redis.call('GET', key)
  if not stored then return false end
  local newline = string.find(stored, '\\n', 1, true) or 0
  local ok, doc = pcall(cjson.decode, string.sub(stored, newline + 1))
  local had = ok and type(doc) == 'table' and doc['attempt']
  if type(had) ~= 'table' or #had ~= 3 then return false end
  sent, retries, deliveries = tonumber(sent), tonumber(retries), tonumber(deliveries)
  local s, r, d = tonumber(had[1]), tonumber(had[2]), tonumber(had[3])
  if s == sent then
    return r > retries or (r == retries and d > deliveries)
  end
  return r > retries and s > sent
end
"""

# set_fenced: store unless a later run wrote (so only an accepted write wakes
# waiters).  KEYS as for set; ARGV value, px, notify_px, sent, retries,
# deliveries.  Returns 1 if stored, 0 if refused.
_SET_FENCED = LuaScript(_STORE + _FENCE + """
if superseded(KEYS[1], ARGV[4], ARGV[5], ARGV[6]) then return 0 end
store(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
return 1
""")

# set_many: KEYS are (result key, notify key) pairs; ARGV px, then per pair
# its value and notify_px.
_SET_MANY = LuaScript(_STORE + """
local px = ARGV[1]
for i = 1, #KEYS, 2 do
  store(KEYS[i], KEYS[i + 1], ARGV[i + 1], px, ARGV[i + 2])
end
return #KEYS / 2
""")

# Record header `index`; the call that completes the set gets every part in
# index order and names itself in the done marker, so its own repeat (a
# redelivered completer) gets the parts again; anyone else after that gets
# nothing.  Parts that expired meanwhile mean nothing to send (false).
_JOIN = """
local function join(parts, done, index, size, payload, ttl)
  size = tonumber(size)
  local closed = redis.call('GET', done)
  if closed and closed ~= 'fired:' .. index then return false end
  if not closed then
    redis.call('HSET', parts, index, payload)
    redis.call('PEXPIRE', parts, ttl)
    if redis.call('HLEN', parts) < size then return false end
    redis.call('SET', done, 'fired:' .. index, 'PX', ttl)
  end
  local fields = {}
  for i = 0, size - 1 do fields[#fields + 1] = i end
  local all = redis.call('HMGET', parts, unpack(fields))
  for i = 1, size do if not all[i] then return false end end
  return all
end
"""

# chord_add: KEYS parts, done; ARGV index, size, payload, ttl (ms).
_CHORD_ADD = LuaScript(_JOIN + """
return join(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
""")

# set_many_fenced_and_join (and set_many_fenced, with no joins): several
# set_fenced in one call, each fenced on its own, a chord header's write
# joined in the same step, only if it was stored (so a crash cannot fall
# between "stored" and "joined", and a fenced-out run never counts).  KEYS per
# write: result, notify, then parts, done when it joins.  ARGV px, then per
# write: value, notify_px, sent, retries, deliveries, joins ('1'/'0'), and
# when it joins: index, size, part payload.  Returns per write 0 (refused),
# 1 (stored; no join, or one that did not complete) or the parts.
_SET_MANY_FENCED_AND_JOIN = LuaScript(_STORE + _FENCE + _JOIN + """
local px, k, a, done = ARGV[1], 1, 2, {}
while a <= #ARGV do
  local joins = ARGV[a + 5] == '1'
  if superseded(KEYS[k], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]) then
    done[#done + 1] = 0
  else
    store(KEYS[k], KEYS[k + 1], ARGV[a], px, ARGV[a + 1])
    local parts = joins and join(KEYS[k + 2], KEYS[k + 3], ARGV[a + 6], ARGV[a + 7],
                                 ARGV[a + 8], px)
    done[#done + 1] = parts or 1
  end
  if joins then k, a = k + 4, a + 9 else k, a = k + 2, a + 6 end
end
return done
""")

# Close the join because a header failed: the same done marker chord_add
# claims, so between "fired" and "failed" exactly one call wins.
_CHORD_FAIL = LuaScript("""
if not redis.call('SET', KEYS[2], 'failed', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
""")

# How long the notify list outlives a write: it only has to cover a waiter
# between its GET and its block, so it stays short (no second copy of every
# result lingers); _BLOCK_SLICE bounds a waiter that misses it anyway.
_NOTIFY_TTL_MS = 5000
_BLOCK_SLICE = 2.0  # seconds; also kept under half the socket timeout
# A waiter on a task sent less than this long ago blocks at once, without the
# GET: any result of it was written since the send, so its notify list is
# still there (half the list's life: margin for the wait's own start).
_NEW_FOR = _NOTIFY_TTL_MS / 2000


def _encode(state: str, payload: bytes) -> bytes:
    return state.encode() + b"\n" + payload


def _decode(raw: bytes | None) -> Stored | None:
    if raw is None:
        return None
    state, _, payload = raw.partition(b"\n")
    return Stored(state.decode(), payload)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _notify_px(state: str, px: int) -> int:
    """How long the notify list lives: 0 (no list) for states that are not ready."""
    return min(px, _NOTIFY_TTL_MS) if state in READY_STATES else 0


def _check_index(chord_id: str, index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ValueError(f"chord {chord_id}: header index {index} is outside 0..{size - 1}")


def _ready(stored: Stored | None) -> bool:
    return stored is not None and stored.ready


class RedisResultStore(ResultStore):
    """See the module docstring."""

    takes_transport_options = True
    batches_fenced_writes = True

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._options: RedisOptions = parse_redis_url(url, options)
        if self._options.wait_replicas:
            raise ConfigurationError("wait_replicas applies to the broker's enqueues "
                                     "(broker_transport_options), not to the result store")
        self._prefix = self._options.prefix
        self._holder = ClientHolder(self._options)
        # A block must end well before the socket times out, or a quiet wait
        # would read as a broken connection.
        self._block_slice = min(_BLOCK_SLICE, self._options.socket_timeout / 2)

    # -- plumbing ----------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _errors(self, action: str, read: bool = False) -> contextlib.AbstractContextManager[None]:
        return translate_errors(self._options.address, action, ResultError, changes_nothing=read)

    # -- writing -----------------------------------------------------------
    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        """One script: store, and wake waiters if ``state`` is ready."""
        px = _ms(ttl)
        keys = [self._key("result", task_id), self._key("result-notify", task_id)]
        args: list[Any] = [_encode(state, payload), px, _notify_px(state, px)]
        with self._errors(f"storing the result of {task_id}"):
            run(self._holder.client, _SET, keys, args)

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        """One script: compare with the stored record's attempt, then store (and wake)."""
        px = _ms(ttl)
        keys = [self._key("result", task_id), self._key("result-notify", task_id)]
        args: list[Any] = [_encode(state, payload), px, _notify_px(state, px),
                attempt.sent, attempt.retries, attempt.deliveries]
        with self._errors(f"storing the result of {task_id}"):
            done = run(self._holder.client, _SET_FENCED, keys, args)
        return bool(done)

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        """The combined script with no joins: one call for the batch."""
        return [w.stored for w in self.set_many_fenced_and_join([(w, None) for w in writes], ttl)]

    def set_many_fenced_and_join(self, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
                                 ttl: float) -> list[Written]:
        """One script call for the batch: each write fenced on its own, and a
        chord header's join made in the same step, only if its write was stored."""
        if not writes:
            return []
        px = _ms(ttl)
        keys: list[str] = []
        args: list[Any] = [px]
        for (task_id, state, payload, attempt), join in writes:
            keys += [self._key("result", task_id), self._key("result-notify", task_id)]
            args += [_encode(state, payload), _notify_px(state, px),
                     attempt.sent, attempt.retries, attempt.deliveries, int(join is not None)]
            if join is not None:
                _check_index(join.chord_id, join.header, join.size)
                keys += [self._key("chord", join.chord_id, "parts"),
                         self._key("chord", join.chord_id, "done")]
                args += [join.header, join.size, join.payload]
        with self._errors(f"storing {len(writes)} results"):
            done = run(self._holder.client, _SET_MANY_FENCED_AND_JOIN, keys, args)
        return [Written(True, [bytes(p) for p in d]) if isinstance(d, list)
                else Written(bool(d), None) for d in done]

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        """One script call for the whole batch: one command to pack, one reply to read."""
        if not items:
            return
        px = _ms(ttl)
        keys: list[str] = []
        args: list[Any] = [px]
        for task_id, state, payload in items:
            keys += [self._key("result", task_id), self._key("result-notify", task_id)]
            args += [_encode(state, payload), _notify_px(state, px)]
        with self._errors(f"storing {len(items)} results"):
            run(self._holder.client, _SET_MANY, keys, args)

    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete the results and their notify lists (a later wait must not see them)."""
        if not task_ids:
            return
        keys = [self._key(kind, t) for t in task_ids for kind in ("result", "result-notify")]
        with self._errors("forget"):
            self._holder.client.delete(*keys)

    # -- reading -----------------------------------------------------------
    def get(self, task_id: str) -> Stored | None:
        key = self._key("result", task_id)
        with self._errors(f"reading the result of {task_id}", read=True):
            return _decode(retry_read(lambda: call(self._holder.client, "GET", key)))

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        if not task_ids:
            return []
        keys = [self._key("result", t) for t in task_ids]
        with self._errors("reading results", read=True):
            raws = retry_read(lambda: self._holder.client.mget(keys))
        return [_decode(as_bytes(raw)) for raw in raws]

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        """Block until ``task_id`` is ready; woken by the write, in this thread.

        The first read raises if Redis is down; once waiting, an outage is
        retried until the deadline (module docstring, "Waiting").
        """
        current = self.get(task_id)
        if _ready(current) or (timeout is not None and timeout <= 0):
            return current
        deadline = deadline_after(timeout)
        key, notify = self._key("result", task_id), self._key("result-notify", task_id)
        backoff = Backoff(base=0.05, cap=1.0)
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return self.get(task_id)
            try:
                pushed = self._block(notify, remaining)
                if _ready(pushed):
                    return pushed
                current = _decode(call(self._holder.client, "GET", key))
                if _ready(current):
                    return current
                backoff.reset()
            except CONNECTION_ERRORS as exc:
                delay = backoff.next_delay()
                if backoff.failures == 1:
                    log.warning("waiting for %s: lost Redis (%s); retrying", task_id, exc)
                time.sleep(delay if remaining is None else min(delay, remaining))

    def wait_for_new(self, task_id: str, timeout: float | None, sent: float) -> Stored | None:
        """:meth:`wait`, without the first ``GET`` for a task sent under ``_NEW_FOR`` ago.

        Its result, if written yet, was written after ``sent``, so its notify
        list still holds it (the list lives ``_NOTIFY_TTL_MS`` after the write,
        or as long as the result when that is shorter: then both are gone and
        the ``GET`` would find nothing either).  Blocking at once finds what the
        ``GET`` would have and saves the waiter a round trip and a wake-up: the
        round trip of ``.delay(...).get()``, ~0.05 ms on the benchmark VM
        (docs/performance.md, "the round trip, stage by stage").  Anything
        else (the slice ran out, Redis away) goes on as :meth:`wait`.
        """
        if (timeout is not None and timeout <= 0) or time.monotonic() - sent >= _NEW_FOR:
            return self.wait(task_id, timeout)
        deadline = deadline_after(timeout)
        try:
            pushed = self._block(self._key("result-notify", task_id), timeout)
        except CONNECTION_ERRORS:
            pushed = None  # wait() reads, retries and reports the outage in its words
        if _ready(pushed):
            return pushed
        return self.wait(task_id, None if deadline is None
                         else max(0.0, deadline - time.monotonic()))

    def _block(self, notify: str, remaining: float | None) -> Stored | None:
        """Wait on the notify list without emptying it (the pop pushes the value
        back), so every waiter on it wakes; None when the slice ran out."""
        span = self._block_slice if remaining is None else min(self._block_slice, remaining)
        raw = call(self._holder.client, "BRPOPLPUSH", notify, notify,
                   f"{max(span, 0.001):.3f}")  # "0" would block forever
        return _decode(raw)

    # -- groups and chords -------------------------------------------------
    def save_group(self, group_id: str, payload: bytes, ttl: float) -> None:
        with self._errors(f"saving group {group_id}"):
            self._holder.client.set(self._key("group", group_id), payload, px=_ms(ttl))

    def load_group(self, group_id: str) -> bytes | None:
        key = self._key("group", group_id)
        with self._errors(f"loading group {group_id}", read=True):
            raw = retry_read(lambda: self._holder.client.get(key))
        return as_bytes(raw)

    def chord_add(
        self, chord_id: str, index: int, size: int, payload: bytes, ttl: float
    ) -> list[bytes] | None:
        _check_index(chord_id, index, size)
        keys = [self._key("chord", chord_id, "parts"), self._key("chord", chord_id, "done")]
        with self._errors(f"joining chord {chord_id}"):
            parts = run(self._holder.client, _CHORD_ADD, keys,
                               [index, size, payload, _ms(ttl)])
        return None if parts is None else [bytes(p) for p in parts]

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        """Atomic with :meth:`chord_add`: both claim the chord's done marker."""
        keys = [self._key("chord", chord_id, "parts"), self._key("chord", chord_id, "done")]
        with self._errors(f"failing chord {chord_id}"):
            return bool(run(self._holder.client, _CHORD_FAIL, keys, [_ms(ttl)]))

    def cleanup(self) -> int:
        return 0  # Redis expires every key itself

    def close(self) -> None:
        self._holder.close()


__all__ = ["RedisResultStore"]
