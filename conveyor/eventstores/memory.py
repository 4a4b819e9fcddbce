"""In-process event store for tests: shared per URL within one process.

Layout: plain dictionaries mirroring the SQLite tables (workers, counter
cells keyed by minute/task/metric, index entries, timelines, queue samples,
claims), pruned to the retention on write at most once a minute.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.eventstores import worker_view
from conveyor.eventstores.base import (
    MAX_TASKS,
    MAX_TIMELINE,
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


@dataclass
class _Events:
    lock: threading.Lock = field(default_factory=threading.Lock)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: dict[tuple[int, str, str], float] = field(default_factory=dict)
    tasks: dict[str, TaskEntry] = field(default_factory=dict)
    timeline: dict[str, list[TimelineEvent]] = field(default_factory=dict)
    queues: dict[tuple[int, str], QueueSample] = field(default_factory=dict)
    claims: dict[str, float] = field(default_factory=dict)
    pruned_at: float = 0.0


_SHARED: dict[str, _Events] = {}
_SHARED_LOCK = threading.Lock()


class MemoryEventStore(EventStore):
    """See module docstring."""

    def __init__(self, url: str = "memory://", retention: float = 86400.0,
                 max_tasks: int = MAX_TASKS,
                 options: Mapping[str, Any] | None = None) -> None:
        # ``options`` are a Redis client's (see EVENT_STORES); there is no client here.
        self.url = url
        self.retention = retention
        self.max_tasks = max_tasks
        with _SHARED_LOCK:
            self._e = _SHARED.setdefault(url, _Events())

    # -- writes ----------------------------------------------------------------
    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        with self._e.lock:
            self._e.workers[str(info["id"])] = {**info, "ttl": ttl}

    def worker_offline(self, worker_id: str) -> None:
        with self._e.lock:
            info = self._e.workers.get(worker_id)
            if info is not None:
                info["offline_at"] = time.time()

    def write(self, batch: Batch) -> None:
        e = self._e
        with e.lock:
            for key, value in batch.cells.items():
                e.cells[key] = e.cells.get(key, 0) + value
            for entry in batch.tasks:
                e.tasks[entry.task_id] = newer(e.tasks.get(entry.task_id), entry)
            for event in batch.timeline:
                events = e.timeline.setdefault(event.task_id, [])
                events.append(event)
                del events[:-MAX_TIMELINE]
            self._trim()
        self.prune()

    def _trim(self) -> None:
        tasks = self._e.tasks
        if len(tasks) <= self.max_tasks:
            return
        ordered = sorted(tasks.values(), key=lambda t: t.updated_at)
        for entry in ordered[: len(tasks) - self.max_tasks]:
            del tasks[entry.task_id]
            self._e.timeline.pop(entry.task_id, None)

    def claim(self, name: str, ttl: float) -> bool:
        now = time.time()
        with self._e.lock:
            if self._e.claims.get(name, 0) > now:
                return False
            self._e.claims[name] = now + ttl
            return True

    def release(self, name: str) -> None:
        with self._e.lock:
            self._e.claims.pop(name, None)

    def write_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        with self._e.lock:
            for sample in samples:
                self._e.queues[(sample.minute, sample.queue)] = sample

    def prune(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        e = self._e
        with e.lock:
            if now - e.pruned_at < 60:
                return
            e.pruned_at = now
            cutoff = now - self.retention
            e.cells = {k: v for k, v in e.cells.items() if k[0] >= cutoff - 60 or k[0] == 0}
            e.queues = {k: v for k, v in e.queues.items() if k[0] >= cutoff - 60}
            e.claims = {k: v for k, v in e.claims.items() if v > now}
            old = [tid for tid, t in e.tasks.items() if t.updated_at < cutoff]
            for tid in old:
                del e.tasks[tid]
            e.timeline = {tid: ev for tid, ev in e.timeline.items() if ev and ev[-1].ts >= cutoff}
            e.workers = {w: i for w, i in e.workers.items()
                         if now - float(i.get("heartbeat_at") or 0) < WORKER_DROP_AFTER}

    # -- reads -----------------------------------------------------------------
    def workers(self) -> list[dict[str, Any]]:
        now = time.time()
        with self._e.lock:
            infos = [dict(i) for i in self._e.workers.values()]
        return [worker_view(i, now) for i in infos
                if now - float(i.get("heartbeat_at") or 0) < WORKER_DROP_AFTER]

    def cells(self, since: float, until: float, step: int) -> list[tuple[int, str, str, float]]:
        out: dict[tuple[int, str, str], float] = {}
        with self._e.lock:
            items = list(self._e.cells.items())
        for (minute, task, metric), value in items:
            if since <= minute + 59 and minute <= until:
                key = (minute // step * step, task, metric)
                out[key] = out.get(key, 0) + value
        return [(t, task, metric, v) for (t, task, metric), v in sorted(out.items())]

    def tasks(self, query: TaskQuery) -> list[TaskEntry]:
        return self.search(query).entries

    def search(self, query: TaskQuery) -> TaskPage:
        with self._e.lock:
            entries = list(self._e.tasks.values())
        entries.sort(key=lambda e: e.updated_at, reverse=True)
        span = TaskQuery(since=query.since, until=query.until)
        in_range = [e for e in entries if span.matches(e)]
        looked = in_range if query.scan is None else in_range[: query.scan]
        found = [e for e in looked if query.matches(e)][: query.limit]
        complete = len(looked) == len(in_range) or len(found) >= query.limit
        return TaskPage(found, complete, looked[-1].updated_at if looked else None)

    def timeline(self, task_id: str) -> list[TimelineEvent]:
        with self._e.lock:
            events = list(self._e.timeline.get(task_id, ()))
        return sorted(events, key=lambda e: e.ts)

    def queue_samples(self, since: float, until: float) -> list[QueueSample]:
        with self._e.lock:
            samples = list(self._e.queues.values())
        return sorted((s for s in samples if since <= s.minute <= until),
                      key=lambda s: (s.minute, s.queue))


def reset_memory_events() -> None:
    """Forget every in-process event store (between tests)."""
    with _SHARED_LOCK:
        _SHARED.clear()
