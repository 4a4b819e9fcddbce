"""Redis event store: keys under ``{prefix}:ev:`` (prefix ``conveyor`` by default,
``broker_transport_options["prefix"]`` otherwise), on its own redis-py client::

    {p}:ev:workers          HASH  worker id -> heartbeat info JSON (with ttl, offline_at)
    {p}:ev:c:{minute}       HASH  "<task>\\x1f<metric>" -> value        EXPIRE retention
    {p}:ev:c10:{10 min}     HASH  the same, summed per 10 minutes      EXPIRE retention
                            metric: n:<STATE> | rt:<bucket> | rt:sum | qw:<bucket> | qw:sum
    {p}:ev:total            HASH  the same fields, all-time totals (no expiry)
    {p}:ev:tasks            ZSET  task id -> updated_at               (the search index)
    {p}:ev:task             HASH  task id -> index entry JSON
    {p}:ev:tl:{task id}     LIST  timeline event JSON, last MAX_TIMELINE  EXPIRE retention
    {p}:ev:q:{minute}       HASH  queue -> [ready, delayed, inflight, dead]  EXPIRE retention
    {p}:ev:claim:{name}     STRING  SET NX EX: who samples queue depths this minute

Counters and samples expire by themselves.  The index (``tasks``/``task``,
with the timelines) is trimmed to the retention and ``MAX_TASKS`` by
:meth:`RedisEventStore.prune`, which each process runs at most once a
minute after a write.  A worker's batch is one pipeline, after one HMGET
that keeps the newest index entry when two workers report on one task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from conveyor.events import (
    MAX_TASKS,
    MAX_TIMELINE,
    MINUTE,
    TOTALS,
    WORKER_DROP_AFTER,
    Batch,
    EventStore,
    QueueSample,
    TaskEntry,
    TaskQuery,
    TimelineEvent,
    newer,
)
from conveyor.eventstores import dumps, worker_view
from conveyor.exceptions import BrokerError

T = TypeVar("T")
ROLLUP = 600
SEP = "\x1f"
PAGE = 500


class RedisEventStore(EventStore):
    """See module docstring."""

    def __init__(self, url: str, retention: float = 86400.0, prefix: str = "conveyor",
                 max_tasks: int = MAX_TASKS) -> None:
        import redis

        self.url = url
        self.retention = retention
        self.max_tasks = max_tasks
        self.p = f"{prefix}:ev"
        self.client: Any = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5,
                                                health_check_interval=30)
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
        entries = self._merged(batch.tasks)
        pipe = self.client.pipeline(transaction=False)
        ttl = int(self.retention) + 2 * ROLLUP
        for (minute, task, metric), value in batch.cells.items():
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
        if entries:
            pipe.hset(f"{self.p}:task", mapping={e.task_id: e.to_json() for e in entries})
            pipe.zadd(f"{self.p}:tasks", {e.task_id: e.updated_at for e in entries})
        for task_id, events in _by_task(batch.timeline).items():
            key = f"{self.p}:tl:{task_id}"
            pipe.rpush(key, *[dumps(e.to_dict()) for e in events])
            pipe.ltrim(key, -MAX_TIMELINE, -1)
            pipe.expire(key, int(self.retention))
        pipe.execute()

    def _merged(self, entries: Sequence[TaskEntry]) -> list[TaskEntry]:
        """The entries that win against what is stored (newest wins)."""
        if not entries:
            return []
        stored = self.client.hmget(f"{self.p}:task", [e.task_id for e in entries])
        out = []
        for entry, raw in zip(entries, stored, strict=True):
            current = TaskEntry.from_json(raw) if raw else None
            kept = newer(current, entry)
            if kept is entry:
                out.append(entry)
        return out

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
        return self._guard(lambda: self._tasks(query))

    def _tasks(self, query: TaskQuery) -> list[TaskEntry]:
        if query.task_id:
            raw = self.client.hget(f"{self.p}:task", query.task_id)
            if raw is not None:
                entry = TaskEntry.from_json(raw)
                return [entry] if query.matches(entry) else []
        found: list[TaskEntry] = []
        for page in self._pages(query):
            found.extend(e for e in page if query.matches(e))
            if len(found) >= query.limit:
                break
        return found[: query.limit]

    def _pages(self, query: TaskQuery) -> Iterator[list[TaskEntry]]:
        """Index entries newest first, a page at a time, within the query's times."""
        top = "+inf" if query.until is None else query.until
        bottom = "-inf" if query.since is None else query.since
        offset = 0
        while True:
            ids: list[bytes] = list(self.client.zrevrangebyscore(
                f"{self.p}:tasks", top, bottom, start=offset, num=PAGE))
            if not ids:
                return
            offset += len(ids)
            raws = self.client.hmget(f"{self.p}:task", ids)
            yield [TaskEntry.from_json(r) for r in raws if r]

    def timeline(self, task_id: str) -> list[TimelineEvent]:
        raws = self._guard(lambda: self.client.lrange(f"{self.p}:tl:{task_id}", 0, -1))
        events = [TimelineEvent.from_dict(json.loads(r)) for r in raws]
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


def _by_task(events: Sequence[TimelineEvent]) -> dict[str, list[TimelineEvent]]:
    out: dict[str, list[TimelineEvent]] = {}
    for event in events:
        out.setdefault(event.task_id, []).append(event)
    return out


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
