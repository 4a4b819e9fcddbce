"""Task and worker events for the monitor: what is recorded, how, and for how long.

Workers must not pay for monitoring on the hot path, so each worker process
aggregates in memory (:class:`Recorder`: a few dictionary updates per task)
and writes the aggregate once per heartbeat (every
``worker_heartbeat_interval`` seconds), in one round trip or transaction.
The store lives beside the results (or the broker), not in the monitor, so a
monitor started later still shows the last day, and its numbers are right
even for hours it was not running.

What is kept (``monitor_retention`` seconds, 24 h by default)

``workers``
    The last heartbeat of each worker process: host, pid, queues, pool,
    concurrency, running tasks, processed counts, memory.  A worker is
    *offline* once its heartbeat is older than its ttl (5 heartbeat
    intervals) or it said goodbye at shutdown; it is dropped
    :data:`WORKER_DROP_AFTER` (1 h) after its last heartbeat.
``counters``
    Per minute and task name: executions by outcome (SUCCESS, FAILURE,
    RETRY, REVOKED, and DEAD for dead-lettered), and two histograms over the
    fixed :data:`BUCKETS` (run time, and queue wait = start minus the later
    of sent time and ETA), each with its sum.  Only non-zero cells are
    stored.
``tasks``
    An index of the :data:`MAX_TASKS` most recently active task ids (name,
    state, queue, worker, retries, times), which the monitor's search reads.
``timeline``
    Per indexed task, what happened to it (sent, started, its outcome,
    actions taken from the monitor); deleted with the task's index entry.
``queues``
    One depth sample per queue per minute (ready, delayed, in flight, dead),
    taken by whichever worker or monitor first claims that minute.

The store is chosen from the app's result backend URL (``django-db`` falls
back to the broker URL); its interface, :class:`EventStore`, and the values
it keeps live in :mod:`conveyor.eventstores.base` (re-exported here), the
layouts in the ``conveyor.eventstores`` modules.  Storage is bounded by the retention, the
number of task names, :data:`MAX_TASKS` and :data:`MAX_TIMELINE`; see
``docs/monitoring.md`` for measured sizes.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from conveyor import _redact as redact
from conveyor import states
from conveyor._serialization import printable
from conveyor.eventstores.base import (
    BUCKETS,
    DEAD,
    MAX_TASKS,
    MAX_TIMELINE,
    MINUTE,
    OUTCOMES,
    RUNTIME,
    TOTALS,
    WAIT,
    WORKER_DROP_AFTER,
    Batch,
    EventSink,
    EventStore,
    NullEvents,
    QueueSample,
    TaskEntry,
    TaskPage,
    TaskQuery,
    TimelineEvent,
    bucket_index,
    minute_of,
    newer,
    samples_from_stats,
)
from conveyor.exceptions import ConfigurationError
from conveyor.schemes import is_amqp, scheme_of

if TYPE_CHECKING:
    from conveyor._message import Message
    from conveyor.app import Conveyor
    from conveyor.brokers.base import Delivery

__all__ = [  # the names moved to eventstores.base stay importable from here
    "BUCKETS",
    "DEAD",
    "FLUSH_AT_REPORTS",
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
    "Recorder",
    "TaskClock",
    "TaskEntry",
    "TaskPage",
    "TaskQuery",
    "TaskReport",
    "TimelineEvent",
    "bucket_index",
    "events_for",
    "minute_of",
    "newer",
    "samples_from_stats",
    "store_for",
    "store_from_url",
]

log = logging.getLogger("conveyor.events")
#: What a worker holds in memory while the store cannot be written.
MAX_PENDING_TASKS = 20_000
#: Task reports (a start and a finish per task) past which a worker writes its
#: events before the next heartbeat: a heartbeat's worth at thousands of tasks
#: a second made the supervisor's heap grow by ~7 MiB, and it stays grown.
FLUSH_AT_REPORTS = 1_000







# -- values --------------------------------------------------------------------
@dataclass(slots=True)
class TaskReport:
    """A task starting (state STARTED) or ending in a worker, as a consumer saw it."""

    task_id: str
    name: str
    queue: str
    state: str
    at: float
    retries: int = 0
    sent_at: float | None = None
    started_at: float | None = None
    runtime: float | None = None
    wait: float | None = None
    info: str | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        """The fields in order, ``TaskReport(*t)`` builds it again: a plain tuple
        pickles in a sixth of the time of this dataclass (for pipes between processes)."""
        return (self.task_id, self.name, self.queue, self.state, self.at, self.retries,
                self.sent_at, self.started_at, self.runtime, self.wait, self.info)














# -- the worker side -----------------------------------------------------------
class _Outcome(Protocol):
    @property
    def action(self) -> str: ...
    @property
    def state(self) -> str | None: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def runtime(self) -> float: ...


class TaskClock:
    """One consumer's stopwatch: turns start and finish into :class:`TaskReport` values.

    It lives in the consumer (child process or thread) because only there
    is the message body at hand; reading its three timing fields is the only
    per-task cost monitoring adds to a worker.
    """

    def __init__(self) -> None:
        self._current: tuple[str, TaskReport] | None = None
        self._unstarted_names: set[str] = set()

    def start(self, delivery: Delivery, task: str, *,
              message: Message | None = None) -> TaskReport:
        """The STARTED report; ``message`` is the decoded body when the caller has
        it, which spares parsing the body a second time."""
        now = time.time()
        sent: float | None
        if message is not None:
            sent, eta, retries = message.created, message.eta, message.retries
        else:
            head = _peek(delivery.body)
            sent, eta = _number(head.get("created")), _number(head.get("eta"))
            retries = _count_of(head.get("retries"))
        due = max(sent or 0.0, eta or 0.0)
        report = TaskReport(
            task_id=_task_id(delivery.id), name=task, queue=delivery.queue,
            state=states.STARTED, at=now, retries=retries,
            sent_at=sent, started_at=now, wait=max(0.0, now - due) if due else None,
        )
        self._current = (delivery.id, report)
        return report

    def finish(self, delivery: Delivery, outcome: _Outcome) -> TaskReport | None:
        """The outcome's report, or None when there is nothing to count.

        Never raises: it runs after the message was settled, in the loop that
        must go on serving, on bodies that may be anything at all."""
        state = DEAD if outcome.action == "dead" else outcome.state
        current, self._current = self._current, None
        if state is None:
            return None  # handed back unstarted, or ignored: nothing to count
        try:
            return self._report(delivery, outcome, state, current)
        except Exception:
            log.exception("no event recorded for %s", delivery.id)
            return None

    def _report(self, delivery: Delivery, outcome: _Outcome, state: str,
                current: tuple[str, TaskReport] | None) -> TaskReport:
        now = time.time()
        info = None if outcome.reason is None else printable(outcome.reason)
        if current is not None and current[0] == delivery.id:
            s = current[1]
            runtime = outcome.runtime or now - (s.started_at or now)
            # Built directly: dataclasses.replace costs ten times as much.
            return TaskReport(s.task_id, s.name, s.queue, state, now, s.retries, s.sent_at,
                              s.started_at, runtime, s.wait, info)
        head = _peek(delivery.body) or _head(delivery.body)  # rare: refused unstarted
        return TaskReport(
            task_id=_task_id(delivery.id), name=self._bounded(_name_of(head.get("task"))),
            queue=delivery.queue, state=state, at=now, retries=_count_of(head.get("retries")),
            sent_at=_number(head.get("created")), info=info,
        )

    def _bounded(self, name: str) -> str:
        """The name to count a never-started message under: as the body gives it, for
        the first MAX_UNSTARTED_NAMES names; a writer flooding the broker with made-up
        names must not add a counter series for each."""
        name = printable(name)
        if name in self._unstarted_names:
            return name
        if len(self._unstarted_names) >= MAX_UNSTARTED_NAMES:
            return "(other names)"
        self._unstarted_names.add(name)
        return name


def killed_report(delivery: Delivery, task: str, state: str, started_monotonic: float,
                  reason: str) -> TaskReport:
    """The report for a task its supervisor killed (hard time limit, terminate)."""
    runtime = max(0.0, time.monotonic() - started_monotonic)
    now = time.time()
    return TaskReport(task_id=_task_id(delivery.id), name=task, queue=delivery.queue,
                      state=state, at=now, started_at=now - runtime, runtime=runtime,
                      info=reason)


def _task_id(delivery_id: str) -> str:
    return delivery_id.split("~", 1)[0]  # retries are stored as <task id>~<n>


#: Bodies above this are not parsed a second time for their timing fields (the
#: executor has decoded them already); such tasks are recorded without a queue wait.
PEEK_LIMIT = 64 * 1024


#: Times beyond this many seconds either side of 1970 are not times (year 5138).
MAX_TIME = 1e11
#: Distinct names one consumer counts never-started messages under (see TaskClock._bounded).
MAX_UNSTARTED_NAMES = 1000
#: The longest task name an event carries (a hostile body may name anything).
MAX_NAME = 200


def _peek(body: bytes, limit: int | None = PEEK_LIMIT) -> dict[str, Any]:
    """The body's top-level fields, or nothing: any body at all, however hostile
    (nested past the recursion limit, not UTF-8, not an object), gives a dict."""
    if limit is not None and len(body) > limit:
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError, MemoryError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _head(body: bytes) -> dict[str, Any]:
    """The task name of a body too large to parse again, from its first bytes
    (an encoded message starts with its id and task name); else nothing."""
    start = body.find(b'"task":', 0, 4096)
    if start < 0:
        return {}
    text = body[start + 7:start + 7 + 2 * MAX_NAME].decode("utf-8", "replace").lstrip()
    try:
        name, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return {}
    return {"task": name}


def _number(value: Any) -> float | None:
    """A time from a body (Unix seconds), or None: NaN, infinities and numbers
    no clock shows (stores turn times into microseconds) are no time."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if -MAX_TIME < value < MAX_TIME else None


def _count_of(value: Any) -> int:
    """A retry count from a body: a non-negative int, else 0."""
    return value if type(value) is int and 0 <= value < 2**31 else 0


def _name_of(value: Any) -> str:
    return value[:MAX_NAME] if isinstance(value, str) and value else "(undecodable)"


class Recorder:
    """A worker's in-memory record of task reports, turned into a :class:`Batch`
    once per heartbeat.

    ``add`` only appends (it runs for every task start and finish); the
    counting, the index entries and the timeline are built in :meth:`drain`.
    Thread-safe.  While the store cannot be written, counters keep adding up
    (they are small); index entries and timeline events are kept for at most
    ``max_pending`` reports, and :attr:`dropped` counts the rest.
    """

    def __init__(self, max_pending: int = MAX_PENDING_TASKS) -> None:
        self._lock = threading.Lock()
        self._max = max_pending
        self._reports: list[TaskReport] = []
        self._cells: dict[tuple[int, str, str], float] = {}  # counted, not yet written
        self._entries: list[TaskEntry] = []  # from a batch the store refused
        self._timeline: list[TimelineEvent] = []
        self.dropped = 0

    def add(self, report: TaskReport) -> None:
        with self._lock:
            self._reports.append(report)
            if len(self._reports) > self._max:  # the store is away: keep counting only
                _count(self._reports, self._cells)
                self.dropped += len(self._reports)
                self._reports = []

    @property
    def pending(self) -> int:
        """Reports added since the last drain (read without the lock: a hint)."""
        return len(self._reports)

    def drain(self, worker: str) -> Batch:
        """Everything recorded since the last drain, stamped with the worker's id."""
        with self._lock:
            reports, cells = self._reports, self._cells
            entries, timeline = self._entries, self._timeline
            self._reports, self._cells, self._entries, self._timeline = [], {}, [], []
        _count(reports, cells)
        latest = {r.task_id: r for r in reports}  # one index entry per task
        entries += [_entry_for(r, worker) for r in latest.values()]
        for report in reports:
            timeline += _events_for(report, worker)
        return Batch(worker=worker, cells=cells, tasks=entries, timeline=timeline)

    def restore(self, batch: Batch) -> None:
        """Put back a batch the store refused, so the next flush carries it."""
        with self._lock:
            for key, value in batch.cells.items():
                self._cells[key] = self._cells.get(key, 0) + value
            room = max(0, self._max - len(self._entries))
            self._entries[:0] = batch.tasks[-room:] if room else []
            room = max(0, 4 * self._max - len(self._timeline))
            self._timeline[:0] = batch.timeline[-room:] if room else []
            self.dropped += len(batch.tasks) - min(len(batch.tasks), room)


_COUNT_METRIC = {state: f"n:{state}" for state in OUTCOMES}
_BUCKET_METRIC = {kind: [f"{kind}:{i}" for i in range(len(BUCKETS) + 1)]
                  for kind in (RUNTIME, WAIT)}


def _count(reports: Sequence[TaskReport], cells: dict[tuple[int, str, str], float]) -> None:
    """Add finished reports to per-minute cells and to the all-time totals."""
    fresh: dict[tuple[int, str, str], float] = {}
    for report in reports:
        if report.state == states.STARTED:
            continue
        minute, name = minute_of(report.at), report.name
        key = (minute, name, _COUNT_METRIC.get(report.state) or f"n:{report.state}")
        fresh[key] = fresh.get(key, 0) + 1
        for kind, value in ((RUNTIME, report.runtime), (WAIT, report.wait)):
            if value is None:
                continue
            key = (minute, name, _BUCKET_METRIC[kind][bucket_index(value)])
            fresh[key] = fresh.get(key, 0) + 1
            key = (minute, name, f"{kind}:sum")
            fresh[key] = fresh.get(key, 0.0) + value
    for (minute, name, metric), value in fresh.items():
        for key in ((minute, name, metric), (TOTALS, name, metric)):
            cells[key] = cells.get(key, 0) + value


def _entry_for(report: TaskReport, worker: str) -> TaskEntry:
    done = report.at if report.state != states.STARTED else None
    return TaskEntry(
        task_id=report.task_id, name=report.name, state=report.state, queue=report.queue,
        worker=worker, retries=report.retries, sent_at=report.sent_at,
        started_at=report.started_at, done_at=done, runtime=report.runtime, wait=report.wait,
        info=report.info, updated_at=report.at,
    )


def _events_for(report: TaskReport, worker: str) -> list[TimelineEvent]:
    tid = report.task_id
    if report.state == states.STARTED:
        events = []
        if report.sent_at is not None:
            what = "sent" if report.retries == 0 else f"retry {report.retries} sent"
            events.append(TimelineEvent(tid, report.sent_at, "SENT", what, worker))
        waited = f"waited {report.wait:.3f}s in {report.queue}" if report.wait is not None else ""
        events.append(TimelineEvent(tid, report.at, states.STARTED, waited, worker))
        return events
    parts = [f"ran {report.runtime:.3f}s" if report.runtime is not None else "",
             report.info or ""]
    return [TimelineEvent(tid, report.at, report.state, "; ".join(p for p in parts if p),
                          worker)]


# -- the store -----------------------------------------------------------------










# -- choosing a store ----------------------------------------------------------
def store_from_url(url: str, retention: float = 86400.0,
                   options: dict[str, Any] | None = None) -> EventStore:
    """Open the event store for a result backend or broker URL (see
    :data:`conveyor.eventstores.EVENT_STORES`)."""
    from conveyor.eventstores import EVENT_STORES

    scheme = scheme_of(url)
    if not EVENT_STORES.knows(scheme) and is_amqp(url):
        from conveyor._amqp import not_in_rabbitmq

        raise not_in_rabbitmq("task events")
    cls = EVENT_STORES.load(scheme, setting="task events",
                            url_for_error=redact.url(url) if "://" in url else url)
    store: EventStore = cls(url, retention, options=dict(options or {}))
    return store


_OPEN: weakref.WeakKeyDictionary[Conveyor, tuple[int, str, EventStore]] = (
    weakref.WeakKeyDictionary()
)
_OPEN_LOCK = threading.Lock()


def events_url(app: Conveyor) -> str:
    """The result backend URL, or the broker's where results go to Django's database."""
    url = app.conf.result_url
    scheme = url.split("://", 1)[0].lower() if "://" in url else url
    return app.conf.beside_broker_url if scheme in ("django-db", "django") else url


def store_for(app: Conveyor) -> EventStore:
    """This process's event store for ``app``, reopened after fork or a URL change."""
    url, pid = events_url(app), os.getpid()
    with _OPEN_LOCK:
        held = _OPEN.get(app)
        if held is not None and held[0] == pid and held[1] == url:
            return held[2]
        store = store_from_url(url, app.conf.monitor_retention, _options_for(app, url))
        _OPEN[app] = (pid, url, store)
        return store


def _options_for(app: Conveyor, url: str) -> dict[str, Any]:
    """The client options of the store already at ``url``: the result store's
    (same prefix, TLS, timeouts), or the broker's when results are in Django.
    Only a Redis store has a client to configure."""
    if scheme_of(url) not in ("redis", "rediss", "unix", "sentinel", "redis+cluster"):
        return {}
    if url == app.conf.result_url:
        return app.conf.result_options()
    return app.conf.broker_options()


def events_for(app: Conveyor) -> EventSink:
    """What ``app.events`` returns: the store, or :class:`NullEvents` when disabled
    or when the backend has no event store (a worker must start regardless)."""
    if not app.conf.events_enabled:
        return NullEvents()
    try:
        return store_for(app)
    except ConfigurationError as exc:
        log.warning("task events are off: %s", exc)
        return NullEvents()
