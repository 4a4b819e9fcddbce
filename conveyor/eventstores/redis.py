"""Redis event store: keys under ``{prefix}:ev:`` (prefix ``conveyor`` by default,
``broker_transport_options["prefix"]`` or the URL's ``?prefix=`` otherwise, as for
the broker), on its own redis-py client::

    {p}:ev:workers          HASH  worker id -> heartbeat info JSON (with ttl, offline_at)
    {p}:ev:c:{minute}       HASH  "<task>\\x1f<metric>" -> value        EXPIRE retention
    {p}:ev:c10:{10 min}     HASH  the same, summed per 10 minutes      EXPIRE retention
                            metric: n:<STATE> | rt:<bucket> | rt:sum | qw:<bucket> | qw:sum
    {p}:ev:total            HASH  the same fields, all-time totals (no expiry)
    {p}:ev:tasks            ZSET  task id -> updated_at               (the search index)
    {p}:ev:entry            HASH  task id -> index entry, a JSON array that ends with
                                  the task's timeline (last MAX_TIMELINE); see _encode
    {p}:ev:task             HASH  task id -> index entry JSON object, as written before
                                  (read, pruned, no longer written; gone after a retention)
    {p}:ev:tl:{task id}     LIST  timeline event JSON of events written without an index
                                  entry (monitor actions), last MAX_TIMELINE  EXPIRE retention
    {p}:ev:q:{minute}       HASH  queue -> [ready, delayed, inflight, dead]  EXPIRE retention
    {p}:ev:claim:{name}     STRING  SET NX EX: who samples queue depths this minute

Counters and samples expire by themselves.  The index (``tasks``/``entry``,
with the timelines) is trimmed to the retention and ``MAX_TASKS`` by
:meth:`RedisEventStore.prune`, which each process runs at most once a
minute after a write.

A worker's batch costs two round trips and no command per task: an HMGET of
the batch's index entries, then one pipeline with the counters and one
``upsert_tasks.lua`` call per 500 tasks that stores every merged entry (newest wins,
timelines joined) unless another writer changed it since the HMGET; those
few are read and merged again.  Keeping a task's timeline inside its entry
replaced a list per task (RPUSH + LTRIM + EXPIRE: three commands per task,
finding 3 in ``docs/performance.md``).  A task's timeline, as read, is its
entry's rows plus its ``tl:`` list.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from conveyor import _lua
from conveyor.eventstores import dumps, worker_view
from conveyor.eventstores.base import (
    MAX_TASKS,
    MAX_TIMELINE,
    MINUTE,
    TOTALS,
    WORKER_DROP_AFTER,
    Batch,
    EventStore,
    QueueSample,
    TaskEntry,
    TaskPage,
    TaskQuery,
    TimelineEvent,
    newer,
)
from conveyor.exceptions import BrokerError

T = TypeVar("T")
log = logging.getLogger("conveyor.events")
#: Rounds of read, merge, compare-and-set for entries other writers keep changing.
UPSERT_TRIES = 5
#: Entries per script call: each call blocks Redis for a few ms at most, not a whole batch.
UPSERT_CHUNK = 500
ROLLUP = 600
SEP = "\x1f"
PAGE = 500
_UPSERT = _lua.script_file("conveyor.eventstores", "upsert_tasks.lua")


class RedisEventStore(EventStore):
    """See module docstring."""

    def __init__(self, url: str, retention: float = 86400.0, max_tasks: int = MAX_TASKS,
                 options: Mapping[str, Any] | None = None) -> None:
        import redis

        from conveyor._redis import new_client, parse_redis_url
        from conveyor._redis_options import connection_options

        # The URL rules every Redis store follows (``?prefix=``, TLS, unix sockets,
        # sentinel://, redis+cluster://); ``options`` override the query: the same connection
        # options and prefix as the result store at this URL (events.store_for).
        parsed = parse_redis_url(url, connection_options(options or {}))
        self.url = url
        self.retention = retention
        self.max_tasks = max_tasks
        self.p = f"{parsed.prefix}:ev"
        self.client: Any = new_client(parsed.client_kwargs, parsed.sentinel, parsed.cluster)
        self._error: type[Exception] = redis.RedisError
        self._pruned_at = 0.0

    def _guard(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except self._error as exc:
            raise BrokerError(f"event store {self.url}: {exc}") from exc

    def close(self) -> None:
        self.client.close()

    # -- writes ----------------------------------------------------------------
    def _server_time(self) -> float:
        """Redis's clock: heartbeats are stamped and judged by one clock, so a
        worker whose own clock is off is not listed as offline (or kept online)."""
        seconds, micros = self.client.time()
        return float(seconds) + micros / 1_000_000

    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        def work() -> None:
            doc = dumps({**info, "ttl": ttl, "heartbeat_at": self._server_time()})
            self.client.hset(f"{self.p}:workers", str(info["id"]), doc)

        self._guard(work)

    def worker_offline(self, worker_id: str) -> None:
        def work() -> None:
            raw = self.client.hget(f"{self.p}:workers", worker_id)
            if raw is not None:
                doc = {**json.loads(raw), "offline_at": self._server_time()}
                self.client.hset(f"{self.p}:workers", worker_id, dumps(doc))

        self._guard(work)

    def write(self, batch: Batch) -> None:
        if not batch:
            return
        self._guard(lambda: self._write(batch))
        self.prune()

    def _write(self, batch: Batch) -> None:
        entries = _latest(batch.tasks)
        events = _by_task(batch.timeline)
        pipe = self.client.pipeline(transaction=False)
        self._add_cells(pipe, batch.cells)
        for task_id in events.keys() - entries.keys():  # no entry to keep them in (actions)
            key = f"{self.p}:tl:{task_id}"
            pipe.rpush(key, *[dumps(e.to_dict()) for e in events[task_id]])
            pipe.ltrim(key, -MAX_TIMELINE, -1)
            pipe.expire(key, int(self.retention))
        pending = self._upsert(pipe, entries, events)
        # The counters are written now: from here on an error must not hand the
        # batch back to the worker (it would count them twice).
        try:
            for _ in range(UPSERT_TRIES):
                if not pending:
                    return
                pending = self._upsert(self.client.pipeline(transaction=False),
                                       {tid: entries[tid] for tid in pending}, events)
        except self._error as exc:
            log.warning("event store: %d index entries not written: %s", len(pending), exc)
            return
        log.warning("event store: %d index entries kept changing under this writer; "
                    "their events are dropped", len(pending))

    def _add_cells(self, pipe: Any, cells: dict[tuple[int, str, str], float]) -> None:
        ttl = int(self.retention) + 2 * ROLLUP
        for (minute, task, metric), value in cells.items():
            field = f"{task}{SEP}{metric}"
            keys = ((f"{self.p}:total",) if minute == TOTALS else
                    (f"{self.p}:c:{minute}", f"{self.p}:c10:{minute // ROLLUP * ROLLUP}"))
            for key in keys:
                if isinstance(value, float):
                    pipe.hincrbyfloat(key, field, value)
                else:
                    pipe.hincrby(key, field, int(value))
                if minute != TOTALS:
                    pipe.expire(key, ttl)

    def _upsert(self, pipe: Any, entries: dict[str, TaskEntry],
                events: dict[str, list[TimelineEvent]]) -> list[str]:
        """Merge ``entries`` and their events with what is stored and write them in
        ``pipe`` (one HMGET first); the task ids another writer changed meanwhile."""
        if not entries:
            pipe.execute()
            return []
        ids = list(entries)
        stored = self.client.hmget(f"{self.p}:entry", ids)
        args: list[Any] = []
        for task_id, raw in zip(ids, stored, strict=True):
            merged = _merge(entries[task_id], events.get(task_id, ()), raw)
            if merged is not None:
                args += (task_id, raw or b"", merged[0], merged[1])
        keys = [f"{self.p}:entry", f"{self.p}:tasks"]
        step = 4 * UPSERT_CHUNK
        calls = range(0, len(args), step)
        if calls:
            _lua.ensure_loaded(self.client, _UPSERT)
        for start in calls:
            _lua.queue(pipe, _UPSERT, keys, args[start:start + step])
        replies = pipe.execute()
        return [c.decode() for reply in replies[len(replies) - len(calls):] for c in reply]

    def claim(self, name: str, ttl: float) -> bool:
        key = f"{self.p}:claim:{name}"
        return bool(self._guard(lambda: self.client.set(key, b"1", nx=True,
                                                        ex=max(1, int(ttl)))))

    def release(self, name: str) -> None:
        self._guard(lambda: self.client.delete(f"{self.p}:claim:{name}"))

    def write_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        if not samples:
            return
        pipe = self.client.pipeline(transaction=False)
        for s in samples:
            key = f"{self.p}:q:{s.minute}"
            pipe.hset(key, s.queue, dumps([s.ready, s.delayed, s.inflight, s.dead]))
            pipe.expire(key, int(self.retention) + 2 * MINUTE)
        self._guard(pipe.execute)

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        self._guard(lambda: self._prune(now))

    def _prune(self, now: float) -> None:
        index = f"{self.p}:tasks"
        old: list[bytes] = list(self.client.zrangebyscore(index, "-inf", now - self.retention))
        excess = int(self.client.zcard(index)) - len(old) - self.max_tasks
        if excess > 0:
            old += list(self.client.zrange(index, len(old), len(old) + excess - 1))
        for chunk in _chunks([o.decode() for o in old], PAGE):
            pipe = self.client.pipeline(transaction=False)
            pipe.zrem(index, *chunk)
            pipe.hdel(f"{self.p}:entry", *chunk)
            pipe.hdel(f"{self.p}:task", *chunk)
            pipe.delete(*[f"{self.p}:tl:{tid}" for tid in chunk])
            pipe.execute()
        workers = self.client.hgetall(f"{self.p}:workers")
        clock = self._server_time()
        gone = [w for w, raw in workers.items()
                if clock - float(json.loads(raw).get("heartbeat_at") or 0) > WORKER_DROP_AFTER]
        if gone:
            self.client.hdel(f"{self.p}:workers", *gone)

    # -- reads -----------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        now = self._guard(self._server_time)
        raw = self._guard(lambda: self.client.hgetall(f"{self.p}:workers"))
        infos = [json.loads(v) for _, v in sorted(raw.items())]
        return [worker_view(i, now) for i in infos
                if now - float(i.get("heartbeat_at") or 0) < WORKER_DROP_AFTER]

    def cells(self, since: float, until: float, step: int) -> list[tuple[int, str, str, float]]:
        width, kind = (ROLLUP, "c10") if step % ROLLUP == 0 else (MINUTE, "c")
        since = max(since, until - self.retention - 2 * ROLLUP, 1.0)  # keys expire anyway
        starts = list(range(int(since // width) * width, int(until) + 1, width))
        pipe = self.client.pipeline(transaction=False)
        for start in starts:
            pipe.hgetall(f"{self.p}:{kind}:{start}")
        hashes = self._guard(pipe.execute)
        out: dict[tuple[int, str, str], float] = {}
        for start, fields in zip(starts, hashes, strict=True):
            bucket = start // step * step
            for raw_field, raw_value in fields.items():
                task, _, metric = raw_field.decode().partition(SEP)
                key = (bucket, task, metric)
                out[key] = out.get(key, 0.0) + float(raw_value)
        return [(t, task, metric, v) for (t, task, metric), v in sorted(out.items())]

    def totals(self) -> list[tuple[str, str, float]]:
        fields = self._guard(lambda: self.client.hgetall(f"{self.p}:total"))
        out = []
        for raw_field, raw_value in sorted(fields.items()):
            task, _, metric = raw_field.decode().partition(SEP)
            out.append((task, metric, float(raw_value)))
        return out

    def tasks(self, query: TaskQuery) -> list[TaskEntry]:
        return self.search(query).entries

    def search(self, query: TaskQuery) -> TaskPage:
        return self._guard(lambda: self._tasks(query))

    def _tasks(self, query: TaskQuery) -> TaskPage:
        if query.task_id:
            [entry] = self._entries([query.task_id])
            if entry is not None:
                return TaskPage([entry] if query.matches(entry) else [])
        found: list[TaskEntry] = []
        seen, oldest = 0, None
        for page in self._pages(query):
            found.extend(e for e in page if query.matches(e))
            seen += len(page)
            oldest = page[-1].updated_at if page else oldest
            if len(found) >= query.limit:
                return TaskPage(found[: query.limit], True, oldest)
            if query.scan is not None and seen >= query.scan:
                return TaskPage(found, False, oldest)
        return TaskPage(found, True, oldest)

    def _pages(self, query: TaskQuery) -> Iterator[list[TaskEntry]]:
        """Index entries newest first, a page at a time, within the query's times."""
        top = "+inf" if query.until is None else query.until
        bottom = "-inf" if query.since is None else query.since
        offset = 0
        while True:
            size = PAGE if query.scan is None else max(1, min(PAGE, query.scan - offset))
            ids: list[bytes] = list(self.client.zrevrangebyscore(
                f"{self.p}:tasks", top, bottom, start=offset, num=size))
            if not ids:
                return
            offset += len(ids)
            yield [e for e in self._entries([i.decode() for i in ids]) if e is not None]

    def _entries(self, ids: list[str]) -> list[TaskEntry | None]:
        """Index entries by id, in this layout or (written before it) the previous one."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hmget(f"{self.p}:entry", ids)
        pipe.hmget(f"{self.p}:task", ids)
        raws, legacy = pipe.execute()
        return [_entry(i, r or old) if (r or old) else None
                for i, r, old in zip(ids, raws, legacy, strict=True)]

    def timeline(self, task_id: str) -> list[TimelineEvent]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(f"{self.p}:entry", task_id)
        pipe.lrange(f"{self.p}:tl:{task_id}", 0, -1)
        raw, loose = self._guard(pipe.execute)
        events = _timeline_rows(task_id, raw)
        events += [TimelineEvent.from_dict(json.loads(r)) for r in loose]
        return sorted(events, key=lambda e: e.ts)

    def queue_samples(self, since: float, until: float) -> list[QueueSample]:
        minutes = list(range(int(since // MINUTE) * MINUTE, int(until) + 1, MINUTE))
        pipe = self.client.pipeline(transaction=False)
        for minute in minutes:
            pipe.hgetall(f"{self.p}:q:{minute}")
        hashes = self._guard(pipe.execute)
        out = []
        for minute, fields in zip(minutes, hashes, strict=True):
            for queue, raw in sorted(fields.items()):
                ready, delayed, inflight, dead = json.loads(raw)
                out.append(QueueSample(minute, queue.decode(), ready, delayed, inflight, dead))
        return [s for s in out if since <= s.minute]


def _latest(entries: Sequence[TaskEntry]) -> dict[str, TaskEntry]:
    """One entry per task (a restored batch and a fresh one may both name a task)."""
    out: dict[str, TaskEntry] = {}
    for entry in entries:
        out[entry.task_id] = newer(out.get(entry.task_id), entry)
    return out


# An index entry is stored as a JSON array (field names and float digits were most
# of the cost of writing one): times and durations in integer microseconds, except
# updated_at, which stays the exact float of the index score.
#   [1, name, state, queue, worker, retries, sent_at, started_at, done_at, runtime,
#    wait, info, updated_at, [[ts, kind, detail, worker], ...]]
# Entries written before this layout (a JSON object in seconds, no timeline) are read too.
ENTRY_VERSION = 1
_Row = list[Any]  # [ts in microseconds, kind, detail, worker]


def _us(seconds: float | None) -> int | None:
    return None if seconds is None else round(seconds * 1_000_000)


def _s(micros: int | None) -> float | None:
    return None if micros is None else micros / 1_000_000


def _encode(e: TaskEntry, rows: list[_Row]) -> str:
    return dumps([ENTRY_VERSION, e.name, e.state, e.queue, e.worker, e.retries, _us(e.sent_at),
                  _us(e.started_at), _us(e.done_at), _us(e.runtime), _us(e.wait), e.info,
                  e.updated_at, rows])


def _decode(task_id: str, raw: bytes) -> tuple[TaskEntry, list[_Row]] | None:
    """An entry and its timeline rows; None for what this version cannot read (it is
    then overwritten, not allowed to stop every later write)."""
    try:
        doc = json.loads(raw)
        if isinstance(doc, dict):  # the previous layout ({p}:ev:task)
            return TaskEntry.from_dict(doc), []
        (_, name, state, queue, worker, retries, sent, started, done, runtime, wait, info,
         updated, rows) = doc
        return TaskEntry(task_id, name, state, queue, worker, retries, _s(sent), _s(started),
                         _s(done), _s(runtime), _s(wait), info, updated), list(rows)
    except (ValueError, TypeError) as exc:
        log.warning("event store: unreadable index entry for %s: %s", task_id, exc)
        return None


def _merge(incoming: TaskEntry, events: Sequence[TimelineEvent],
           raw: bytes | None) -> tuple[str, float] | None:
    """The entry to store (newest entry, joined timeline) and its score, or None
    when what is stored already says it all."""
    rows: list[_Row] = [[round(e.ts * 1_000_000), e.kind, e.detail, e.worker] for e in events]
    keep = incoming
    decoded = _decode(incoming.task_id, raw) if raw is not None else None
    if decoded is not None:
        current, stored = decoded
        keep = newer(current, incoming)
        if keep is current and not rows:
            return None
        rows = sorted(stored + rows, key=lambda row: row[0])
    return _encode(keep, rows[-MAX_TIMELINE:]), keep.updated_at


def _entry(task_id: str, raw: bytes) -> TaskEntry | None:
    decoded = _decode(task_id, raw)
    return decoded[0] if decoded is not None else None


def _timeline_rows(task_id: str, raw: bytes | None) -> list[TimelineEvent]:
    decoded = _decode(task_id, raw) if raw is not None else None
    rows = decoded[1] if decoded is not None else []
    return [TimelineEvent(task_id, ts / 1_000_000, kind, detail, worker)
            for ts, kind, detail, worker in rows]


def _by_task(events: Sequence[TimelineEvent]) -> dict[str, list[TimelineEvent]]:
    out: dict[str, list[TimelineEvent]] = {}
    for event in events:
        out.setdefault(event.task_id, []).append(event)
    return out


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
