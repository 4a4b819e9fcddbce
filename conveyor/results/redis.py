"""Results in Redis: one key per task, pub/sub to wake waiters.

Key layout
==========

``P`` is the key prefix (``?prefix=`` in the URL, default ``conveyor``).

``P:result:{task_id}`` (string)
    ``state`` + ``\\n`` + payload.  Written by :meth:`set` (workers), deleted by
    :meth:`forget`; expires after the ``ttl`` of the last write.
``P:group:{group_id}`` (string)
    A group's description, from :meth:`save_group`; expires after its ``ttl``.
``P:chord:{chord_id}:parts`` (hash)
    Header index -> payload, from :meth:`chord_add`; expires after its ``ttl``
    and is deleted when the chord fires.
``P:chord:{chord_id}:done`` (string)
    ``1`` once the chord fired, ``failed`` once :meth:`chord_fail` closed it;
    whoever sets it first (SET NX) wins, so a chord fires or fails once.
    Expires after its ``ttl``.
``P:result-ready:{task_id}`` (pub/sub channel)
    The stored value, published by the write of a ready state
    (SUCCESS, FAILURE, REVOKED).
``P:result-listener:{uuid}`` (pub/sub channel)
    Nudges one store object's listener thread (see below).

One string per result makes :meth:`get` one ``GET`` and :meth:`get_many` one
``MGET``; the state is the text before the first newline (state names have
none), so no decoding of the payload is needed to know whether it is ready.
Redis expires everything itself, so :meth:`cleanup` has nothing to do.  None of
these names clash with the broker's (``conveyor.brokers.redis``), so both can
share one database and prefix.

Waiting
=======

:meth:`wait` does not poll.  A ready-state write runs a small script that
``SET``s the key and ``PUBLISH``es the same value on ``P:result-ready:{task_id}``
(one round trip, the value sent once).  Each store object keeps **one**
subscriber connection, owned by one daemon thread (redis-py's ``PubSub`` is
not safe to share between threads).  A waiting thread registers an event for
its task id and nudges the listener, which subscribes; once Redis confirms
the subscription the waiter reads the key (so a write that happened before
the subscription is not missed), then sleeps on its event until the
published value arrives.  A result that is already ready costs one ``GET``
and no subscription at all.

If the subscriber connection breaks, the listener wakes every waiter (they
read the key again) and reconnects with capped, jittered backoff,
re-subscribing to whatever is still waited on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.client import PubSub

from conveyor._redis import (
    CONNECTION_ERRORS,
    Backoff,
    ClientHolder,
    RedisOptions,
    as_bytes,
    parse_redis_url,
    retry_read,
    translate_errors,
)
from conveyor.exceptions import ResultError
from conveyor.results.base import ResultStore, Stored, deadline_after
from conveyor.results.record import Attempt
from conveyor.states import READY_STATES

log = logging.getLogger("conveyor.results.redis")

# SET with expiry and publish the same bytes: one round trip, the value sent once.
_SET_AND_PUBLISH = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
"""

# set_fenced: SET (and PUBLISH a ready state) unless the stored record was
# written by a later run of the same task call (Attempt.superseded_by, in Lua;
# docs/decisions/0004).  ARGV: value, px, channel ('' = none), sent, retries,
# deliveries.  Returns 1 if stored, 0 if refused.
_SET_FENCED = """
local stored = redis.call('GET', KEYS[1])
if stored then
  local newline = string.find(stored, '\\n', 1, true) or 0
  local ok, doc = pcall(cjson.decode, string.sub(stored, newline + 1))
  local had = ok and type(doc) == 'table' and doc['attempt']
  if type(had) == 'table' and #had == 3 then
    local sent, retries, deliveries = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
    local s, r, d = tonumber(had[1]), tonumber(had[2]), tonumber(had[3])
    if s == sent then
      if r > retries or (r == retries and d > deliveries) then return 0 end
    elseif r > retries and s > sent then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], ARGV[1]) end
return 1
"""

# Record header `index`; the call that completes the set (and only that one,
# guarded by SET NX on the done marker) gets every part in index order.
# set_many: KEYS are result keys; ARGV: px, then per key its value and the
# channel to publish it on ('' for a state that is not ready).
_SET_MANY = """
local px = ARGV[1]
for i, key in ipairs(KEYS) do
  local value, channel = ARGV[2 * i], ARGV[2 * i + 1]
  redis.call('SET', key, value, 'PX', px)
  if channel ~= '' then redis.call('PUBLISH', channel, value) end
end
return #KEYS
"""

_CHORD_ADD = """
local parts, done = KEYS[1], KEYS[2]
local index, size, ttl = ARGV[1], tonumber(ARGV[2]), ARGV[4]
if redis.call('EXISTS', done) == 1 then return false end
redis.call('HSET', parts, index, ARGV[3])
redis.call('PEXPIRE', parts, ttl)
if redis.call('HLEN', parts) < size then return false end
if not redis.call('SET', done, '1', 'NX', 'PX', ttl) then return false end
local fields = {}
for i = 0, size - 1 do fields[#fields + 1] = i end
local all = redis.call('HMGET', parts, unpack(fields))
redis.call('DEL', parts)
return all
"""

# Close the join because a header failed: the same done marker chord_add
# claims, so between "fired" and "failed" exactly one call wins.
_CHORD_FAIL = """
if not redis.call('SET', KEYS[2], 'failed', 'NX', 'PX', ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

_LISTEN_SLICE = 5.0  # seconds the listener blocks before looking at its to-do list anyway
# A listener nobody has waited on for this long closes its connection and
# ends; the next wait starts a new one.  Bounds idle connections and threads.
_IDLE_EXIT = 60.0


def _encode(state: str, payload: bytes) -> bytes:
    return state.encode() + b"\n" + payload


def _decode(raw: bytes | None) -> Stored | None:
    if raw is None:
        return None
    state, _, payload = raw.partition(b"\n")
    return Stored(state.decode(), payload)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


@dataclass(eq=False)
class _Waiter:
    """One thread waiting for one task id."""

    event: threading.Event = field(default_factory=threading.Event)
    value: bytes | None = None


class _ReadyListener:
    """The store's single subscriber connection and the thread that reads it."""

    def __init__(self, holder: ClientHolder, wake_channel: str) -> None:
        self._holder = holder
        self._wake_channel = wake_channel.encode()
        self._lock = threading.Lock()
        self._waiters: dict[bytes, set[_Waiter]] = {}
        self._confirmed: set[bytes] = set()  # channels Redis confirmed we are subscribed to
        self._requested: set[bytes] = set()  # channels we sent SUBSCRIBE for
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- waiter side -------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, channel: bytes) -> Iterator[_Waiter]:
        waiter = _Waiter()
        with self._lock:
            first = channel not in self._waiters
            self._waiters.setdefault(channel, set()).add(waiter)
            started = self._ensure_thread()
        try:
            if first and not started:
                self._nudge()
            yield waiter
        finally:
            with self._lock:
                group = self._waiters.get(channel)
                if group is not None:
                    group.discard(waiter)
                    if not group:
                        del self._waiters[channel]  # unsubscribed at the next loop

    def confirmed(self, channel: bytes) -> bool:
        with self._lock:
            return channel in self._confirmed

    def _ensure_thread(self) -> bool:
        """Start the listener if needed (lock held); True if it was just started."""
        if self._thread is not None and self._thread.is_alive():
            return False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="conveyor-results-listener",
                                        daemon=True)
        self._thread.start()
        return True

    def _nudge(self) -> None:
        """Interrupt the listener's blocking read so it subscribes now."""
        with contextlib.suppress(*CONNECTION_ERRORS):
            self._holder.client.publish(self._wake_channel, b"")

    def stop(self) -> None:
        self._stopping = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._nudge()
            thread.join(timeout=2.0)

    # -- listener thread ---------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(base=0.05, cap=2.0)
        while not self._stopping:
            try:
                if self._serve(backoff):
                    return
            except CONNECTION_ERRORS as exc:
                log.warning("result listener lost Redis (%s); reconnecting", exc)
                self._lost()
                time.sleep(backoff.next_delay())
            except Exception:  # a bug here must not silently strand waiters
                log.exception("result listener failed; restarting it")
                self._lost()
                time.sleep(backoff.next_delay())

    def _serve(self, backoff: Backoff) -> bool:
        """Read the connection until stopped (False) or idle long enough to end (True)."""
        pubsub = self._holder.client.pubsub()
        idle_since = time.monotonic()
        try:
            pubsub.subscribe(self._wake_channel)
            while not self._stopping:
                self._sync(pubsub)
                message = pubsub.get_message(timeout=_LISTEN_SLICE)
                if message is not None:
                    backoff.reset()
                    self._dispatch(message)
                if self._waiters:
                    idle_since = time.monotonic()
                elif time.monotonic() - idle_since > _IDLE_EXIT and self._retire():
                    return True
            return False
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _retire(self) -> bool:
        """End this thread unless a waiter just arrived (decided under the lock,
        so a new waiter either sees no thread and starts one, or is served)."""
        with self._lock:
            if self._waiters:
                return False
            self._thread = None
            self._requested.clear()
            self._confirmed.clear()
            return True

    def _sync(self, pubsub: PubSub) -> None:
        """Subscribe to newly waited-on channels, unsubscribe from abandoned ones."""
        with self._lock:
            wanted = set(self._waiters)
            add = wanted - self._requested
            drop = self._requested - wanted
            self._requested = wanted
        if add:
            pubsub.subscribe(*add)
        if drop:
            pubsub.unsubscribe(*drop)

    def _dispatch(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if channel == self._wake_channel:
            return
        with self._lock:
            if kind == "subscribe":
                self._confirmed.add(channel)
            elif kind == "unsubscribe":
                self._confirmed.discard(channel)
            waiters = list(self._waiters.get(channel, ()))
        for waiter in waiters:
            if kind == "message":
                waiter.value = message["data"]
            waiter.event.set()

    def _lost(self) -> None:
        """The connection broke: nothing is subscribed; let every waiter re-read."""
        with self._lock:
            self._confirmed.clear()
            self._requested.clear()
            waiters = [w for group in self._waiters.values() for w in group]
        for waiter in waiters:
            waiter.event.set()


class RedisResultStore(ResultStore):
    """See the module docstring."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self._options: RedisOptions = parse_redis_url(url, options)
        self._prefix = self._options.prefix
        self._holder = ClientHolder(self._options)
        client = self._holder.client
        self._set_and_publish = client.register_script(_SET_AND_PUBLISH)
        self._set_many = client.register_script(_SET_MANY)
        self._chord_add = client.register_script(_CHORD_ADD)
        self._chord_fail = client.register_script(_CHORD_FAIL)
        self._set_fenced = client.register_script(_SET_FENCED)
        self._listener_pid = os.getpid()
        self._listener_obj: _ReadyListener | None = None
        self._listener_lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------
    def _key(self, *parts: str) -> str:
        return ":".join((self._prefix, *parts))

    def _errors(self, action: str, read: bool = False) -> contextlib.AbstractContextManager[None]:
        return translate_errors(self._options.address, action, ResultError, changes_nothing=read)

    def _listener(self) -> _ReadyListener:
        """This process's listener; a forked child builds its own, lazily."""
        if self._listener_pid != os.getpid():
            self._listener_pid = os.getpid()
            self._listener_lock = threading.Lock()
            self._listener_obj = None
        with self._listener_lock:
            if self._listener_obj is None:
                wake = self._key("result-listener", uuid.uuid4().hex)
                self._listener_obj = _ReadyListener(self._holder, wake)
            return self._listener_obj

    # -- writing -----------------------------------------------------------
    def set(self, task_id: str, state: str, payload: bytes, ttl: float) -> None:
        client = self._holder.client
        key, value, px = self._key("result", task_id), _encode(state, payload), _ms(ttl)
        with self._errors(f"storing the result of {task_id}"):
            if state in READY_STATES:
                channel = self._key("result-ready", task_id)
                self._set_and_publish(keys=[key], args=[value, px, channel], client=client)
            else:
                client.set(key, value, px=px)

    def set_fenced(self, task_id: str, state: str, payload: bytes, ttl: float,
                   attempt: Attempt) -> bool:
        """One script: compare with the stored record's attempt, then write (and publish)."""
        key, value = self._key("result", task_id), _encode(state, payload)
        channel = self._key("result-ready", task_id) if state in READY_STATES else ""
        with self._errors(f"storing the result of {task_id}"):
            done = self._set_fenced(keys=[key], args=[value, _ms(ttl), channel, *attempt.as_list()],
                                    client=self._holder.client)
        return bool(done)

    def set_many(self, items: Sequence[tuple[str, str, bytes]], ttl: float) -> None:
        """One script call for the whole batch: one command to pack, one reply to read."""
        if not items:
            return
        keys: list[str] = []
        args: list[Any] = [_ms(ttl)]
        for task_id, state, payload in items:
            keys.append(self._key("result", task_id))
            ready = state in READY_STATES
            args += [_encode(state, payload), self._key("result-ready", task_id) if ready else ""]
        with self._errors(f"storing {len(items)} results"):
            self._set_many(keys=keys, args=args, client=self._holder.client)

    def forget(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self._errors("forget"):
            self._holder.client.delete(*(self._key("result", t) for t in task_ids))

    # -- reading -----------------------------------------------------------
    def get(self, task_id: str) -> Stored | None:
        key = self._key("result", task_id)
        with self._errors(f"reading the result of {task_id}", read=True):
            return _decode(as_bytes(retry_read(lambda: self._holder.client.get(key))))

    def get_many(self, task_ids: Sequence[str]) -> list[Stored | None]:
        if not task_ids:
            return []
        keys = [self._key("result", t) for t in task_ids]
        with self._errors("reading results", read=True):
            raws = retry_read(lambda: self._holder.client.mget(keys))
        return [_decode(as_bytes(raw)) for raw in raws]

    def wait(self, task_id: str, timeout: float | None) -> Stored | None:
        """Block until ``task_id`` is ready; woken by pub/sub, never by polling."""
        current = self.get(task_id)
        if (current is not None and current.ready) or (timeout is not None and timeout <= 0):
            return current
        deadline = deadline_after(timeout)
        channel = self._key("result-ready", task_id).encode()
        listener = self._listener()
        with listener.watch(channel) as waiter:
            while True:
                # Clear before looking, so a wake-up after the look is not lost.
                waiter.event.clear()
                published = _decode(waiter.value)
                if published is not None and published.ready:
                    return published
                if listener.confirmed(channel):
                    current = self.get(task_id)
                    if current is not None and current.ready:
                        return current
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return self.get(task_id)
                waiter.event.wait(remaining)

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
        if not 0 <= index < size:
            raise ValueError(f"chord {chord_id}: header index {index} is outside 0..{size - 1}")
        keys = [self._key("chord", chord_id, "parts"), self._key("chord", chord_id, "done")]
        with self._errors(f"joining chord {chord_id}"):
            parts = self._chord_add(keys=keys, args=[index, size, payload, _ms(ttl)],
                                    client=self._holder.client)
        return None if parts is None else [bytes(p) for p in parts]

    def chord_fail(self, chord_id: str, ttl: float) -> bool:
        """Atomic with :meth:`chord_add`: both claim the chord's done marker."""
        keys = [self._key("chord", chord_id, "parts"), self._key("chord", chord_id, "done")]
        with self._errors(f"failing chord {chord_id}"):
            return bool(self._chord_fail(keys=keys, args=[_ms(ttl)], client=self._holder.client))

    def cleanup(self) -> int:
        return 0  # Redis expires every key itself

    def close(self) -> None:
        if self._listener_obj is not None and self._listener_pid == os.getpid():
            self._listener_obj.stop()
        self._holder.close()


__all__ = ["RedisResultStore"]
