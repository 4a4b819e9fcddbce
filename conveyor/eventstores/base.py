"""What an event store keeps, and the interface every store implements.

The stores (``memory``, ``sqlite``, ``redis`` in this package, and any a
plug-in registers, see :data:`conveyor.eventstores.EVENT_STORES`) keep what
:mod:`conveyor._events` describes: worker heartbeats, per-minute counters,
the task index, timelines and queue samples.  The values here are what they
store and return; workers build them in :mod:`conveyor._events`.
"""

from __future__ import annotations

import abc
import bisect
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from conveyor import states

if TYPE_CHECKING:
    from conveyor.brokers.base import Broker, QueueStats

__all__ = [
    "BUCKETS",
    "DEAD",
    "MAX_TASKS",
    "MAX_TIMELINE",
    "MINUTE",
    "OUTCOMES",
    "RUNTIME",
    "TOTALS",
    "WAIT",
    "WORKER_DROP_AFTER",
    "Batch",
    "EventSink",
    "EventStore",
    "NullEvents",
    "QueueSample",
    "TaskEntry",
    "TaskPage",
    "TaskQuery",
    "TimelineEvent",
    "bucket_index",
    "minute_of",
    "newer",
    "samples_from_stats",
]

#: Upper bounds (seconds) of the run-time and queue-wait histogram buckets;
#: one more bucket holds everything above the last bound.
BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
)
DEAD = "DEAD"  # the counter state for dead-lettered messages
OUTCOMES = (states.SUCCESS, states.FAILURE, states.RETRY, states.REVOKED, DEAD)
MINUTE = 60
TOTALS = 0  # the "minute" holding all-time totals
#: How many task ids the search index keeps (the oldest go first).
MAX_TASKS = 10_000
#: How many timeline events one task keeps (a task retried forever stays bounded).
MAX_TIMELINE = 50
#: A worker gone quiet is listed as offline, then forgotten after this long.
WORKER_DROP_AFTER = 3600.0
# Metric names of counter cells: "n:<STATE>" counts, "rt:<i>"/"qw:<i>" histogram
# buckets of run time / queue wait, "rt:sum"/"qw:sum" their sums.
RUNTIME, WAIT = "rt", "qw"


def bucket_index(seconds: float) -> int:
    """The histogram bucket a duration falls in (bounds are inclusive)."""
    return bisect.bisect_left(BUCKETS, seconds)


def minute_of(ts: float) -> int:
    return int(ts // MINUTE) * MINUTE


@dataclass(slots=True)
class TaskEntry:
    """One task in the search index: its latest known state."""

    task_id: str
    name: str
    state: str
    queue: str | None = None
    worker: str | None = None
    retries: int = 0
    sent_at: float | None = None
    started_at: float | None = None
    done_at: float | None = None
    runtime: float | None = None
    wait: float | None = None
    info: str | None = None
    updated_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        # Written out: dataclasses.asdict deep-copies each field and was 40% of a flush.
        return {
            "task_id": self.task_id, "name": self.name, "state": self.state,
            "queue": self.queue, "worker": self.worker, "retries": self.retries,
            "sent_at": self.sent_at, "started_at": self.started_at, "done_at": self.done_at,
            "runtime": self.runtime, "wait": self.wait, "info": self.info,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TaskEntry:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskEntry:
        return cls.from_dict(json.loads(text))


@dataclass(slots=True)
class TimelineEvent:
    """Something that happened to a task, for its detail page."""

    task_id: str
    ts: float
    kind: str
    detail: str = ""
    worker: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "ts": self.ts, "kind": self.kind,
                "detail": self.detail, "worker": self.worker}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> TimelineEvent:
        return cls(**{k: v for k, v in doc.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class QueueSample:
    """A queue's depths at one minute."""

    minute: int
    queue: str
    ready: int
    delayed: int
    inflight: int
    dead: int


@dataclass(frozen=True, slots=True)
class TaskQuery:
    """What the monitor's task search asks for; every field narrows."""

    task_id: str | None = None
    name: str | None = None  # a substring of the task name
    state: str | None = None
    queue: str | None = None
    since: float | None = None
    until: float | None = None
    limit: int = 100
    #: Look at no more than this many of the most recent entries in the time range
    #: (None: all); bounds a search that matches little (the monitor sets it).
    scan: int | None = None

    def matches(self, entry: TaskEntry) -> bool:
        checks = (
            self.task_id is None or entry.task_id.startswith(self.task_id),
            self.name is None or self.name.lower() in entry.name.lower(),
            self.state is None or entry.state == self.state,
            self.queue is None or entry.queue == self.queue,
            self.since is None or entry.updated_at >= self.since,
            self.until is None or entry.updated_at <= self.until,
        )
        return all(checks)


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A search's answer; ``complete`` is False when it stopped at ``query.scan``
    entries, so older entries (before the oldest one looked at) may match too."""

    entries: list[TaskEntry]
    complete: bool = True
    oldest: float | None = None  # updated_at of the oldest entry looked at


@dataclass
class Batch:
    """What one worker writes per heartbeat."""

    worker: str
    cells: dict[tuple[int, str, str], float] = field(default_factory=dict)
    tasks: list[TaskEntry] = field(default_factory=list)
    timeline: list[TimelineEvent] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.cells or self.tasks or self.timeline)


class EventSink(Protocol):
    """What a worker writes: heartbeats, its batches, queue depth samples."""

    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None: ...
    def worker_offline(self, worker_id: str) -> None: ...
    def write(self, batch: Batch) -> None: ...
    def sample_queues(self, broker: Broker) -> None: ...


class NullEvents:
    """Keeps nothing (``events_enabled=False``)."""

    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        return None

    def worker_offline(self, worker_id: str) -> None:
        return None

    def write(self, batch: Batch) -> None:
        return None

    def sample_queues(self, broker: Broker) -> None:
        return None


class EventStore(abc.ABC):
    """Events for one app; implementations in ``conveyor.eventstores``.

    Thread-safe, reopened per process (see :func:`events_for`).
    """

    url: str
    retention: float = 86400.0
    _sampled_minute: int | None = None  # the minute whose queue sample is settled

    # -- written by workers ----------------------------------------------------
    @abc.abstractmethod
    def worker_heartbeat(self, info: dict[str, Any], ttl: float) -> None:
        """Store a worker's latest state (``info["id"]`` names it)."""

    @abc.abstractmethod
    def worker_offline(self, worker_id: str) -> None:
        """A worker shut down cleanly: list it as offline now."""

    @abc.abstractmethod
    def write(self, batch: Batch) -> None:
        """Add counters, upsert index entries (newest wins), append timeline events."""

    @abc.abstractmethod
    def claim(self, name: str, ttl: float) -> bool:
        """True for the first caller of ``name`` within ``ttl`` seconds, across processes."""

    @abc.abstractmethod
    def release(self, name: str) -> None:
        """Give a claim back (the claimer had nothing to write)."""

    @abc.abstractmethod
    def write_queue_samples(self, samples: Sequence[QueueSample]) -> None:
        """Store depth samples (one per queue and minute; the last write wins)."""

    def sample_queues(self, broker: Broker) -> None:
        """Take this minute's queue depth sample unless someone already did.

        Asks the store at most once a minute once the minute is settled (sampled
        here or claimed elsewhere): heartbeats come every few seconds."""
        minute = minute_of(time.time())
        if self._sampled_minute == minute:
            return
        name = f"queues:{minute}"
        if not self.claim(name, ttl=2 * MINUTE):
            self._sampled_minute = minute
            return
        samples = samples_from_stats(minute, broker.stats())
        if samples:
            self.write_queue_samples(samples)
            self._sampled_minute = minute
        else:  # no queue yet: let the next heartbeat try again this minute
            self.release(name)

    def add_events(self, events: Sequence[TimelineEvent]) -> None:
        """Timeline events from elsewhere (actions taken in the monitor)."""
        self.write(Batch(worker="", timeline=list(events)))

    # -- read by the monitor ---------------------------------------------------
    @abc.abstractmethod
    def workers(self) -> list[dict[str, Any]]:
        """Every worker heard from within :data:`WORKER_DROP_AFTER`, with its info.

        Each dict is the heartbeat's info plus ``ttl`` and, after a clean
        shutdown, ``offline_at``.
        """

    @abc.abstractmethod
    def cells(self, since: float, until: float, step: int) -> list[tuple[int, str, str, float]]:
        """Counter cells between ``since`` and ``until``, summed into ``step``-second
        buckets: ``(bucket start, task name, metric, value)``."""

    @abc.abstractmethod
    def tasks(self, query: TaskQuery) -> list[TaskEntry]:
        """Index entries matching ``query``, most recently updated first."""

    def search(self, query: TaskQuery) -> TaskPage:
        """:meth:`tasks`, saying whether the scan was cut at ``query.scan``."""
        return TaskPage(self.tasks(query))

    @abc.abstractmethod
    def timeline(self, task_id: str) -> list[TimelineEvent]:
        """A task's events, oldest first."""

    @abc.abstractmethod
    def queue_samples(self, since: float, until: float) -> list[QueueSample]:
        """Depth samples between two times, oldest first."""

    def totals(self) -> list[tuple[str, str, float]]:
        """All-time counter cells ``(task name, metric, value)``."""
        return [(task, metric, v) for _, task, metric, v in self.cells(TOTALS, TOTALS, MINUTE)]

    def task(self, task_id: str) -> TaskEntry | None:
        found = self.tasks(TaskQuery(task_id=task_id, limit=1))
        return found[0] if found and found[0].task_id == task_id else None

    def prune(self, now: float | None = None) -> None:  # noqa: B027 - optional hook
        """Drop what is older than the retention (where keys do not expire)."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def samples_from_stats(minute: int, stats: Iterable[QueueStats]) -> list[QueueSample]:
    return [QueueSample(minute, s.queue, s.ready, s.delayed, s.inflight, s.dead) for s in stats]


def newer(current: TaskEntry | None, incoming: TaskEntry) -> TaskEntry:
    """The entry to keep: the later update wins; a late STARTED never hides an outcome."""
    if current is None:
        return incoming
    if incoming.updated_at < current.updated_at:
        return current
    late_start = incoming.state == states.STARTED and current.state in OUTCOMES
    if late_start and current.done_at and current.retries >= incoming.retries:
        return current
    return incoming
