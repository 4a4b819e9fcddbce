"""Rate limits: when a task may start, per worker (Celery's) and across workers.

``rate_limit="10/s"`` (or the ``task_default_rate_limit`` setting) is
Celery's limit: at most that many starts per second *per worker*, spaced
evenly (a token bucket of capacity one, as Celery's consumer keeps one per
task type).  A message over the limit is not refused: its consumer keeps it,
runs what else it holds, and starts it when its slot comes.  Its lease is
renewed meanwhile like any held message's, so a rate-limited backlog is never
handed out again.  ``worker_disable_rate_limits`` turns these off.
``app.control.rate_limit(task, "5/s")`` changes or removes one on running
workers, for every consumer at once (the interval sits in shared memory).

``global_rate_limit="100/m"`` (a task option) and the
``queue_global_rate_limits`` setting (``{"emails": "100/m"}``: every task
sent to that queue) are Conveyor's addition: their slots live in the broker
(:meth:`~conveyor.brokers.base.Broker.take_rate_slot`), so every worker of
the broker shares one limit.  A message under both a task and a queue limit
takes a slot under each at once.  A worker takes a slot only when it is near
(:data:`GLOBAL_HORIZON`), so a worker that stops holds few slots hostage.
``worker_disable_rate_limits`` leaves it on: one worker that ignored a limit
shared with others would break it for all.

Slots are reserved, not polled: the first message to ask gets the next free
slot and keeps it, so starts are spaced exactly and in the order asked.
Prefork children of one worker share the per-worker slots through shared
memory made by the supervisor before it forks (:class:`WorkerSlots`).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from conveyor.brokers.base import Broker, Delivery
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.task import parse_rate_limit

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.worker")
_CTX = multiprocessing.get_context("fork")

GLOBAL_HORIZON = 1.0  # seconds: a global slot is taken at most this far ahead
BROKER_AWAY_RETRY = 1.0  # seconds before asking a broker that did not answer again
LOCK_TIMEOUT = 1.0  # a child killed inside the lock must not stop its siblings for good


class WorkerSlots:
    """Each task's per-worker interval and next free start slot, shared by all consumers.

    Two anonymous shared-memory arrays with one cell per registered task
    (0.0 in ``interval``: no limit), guarded by one lock.  They are made
    before the fork, so every child sees the same cells (threads of one
    process simply share them), and a remote ``rate_limit`` command changes
    a running worker's limit for all its consumers at once.
    """

    def __init__(self, names: Sequence[str], intervals: dict[str, float]) -> None:
        self._index = {name: i for i, name in enumerate(names)}
        size = max(1, len(names))
        self._next = _CTX.RawArray("d", size)
        self._interval = _CTX.RawArray("d", size)
        self._limited = _CTX.RawValue("i", 0)  # cells with an interval: 0 lets hold() skip
        self._lock = _CTX.Lock()
        for name, interval in intervals.items():
            self.set_interval(name, interval)

    def interval(self, name: str) -> float | None:
        """Seconds between starts of ``name`` on this worker, or None (no limit)."""
        if not self._limited.value:
            return None
        cell = self._index.get(name)
        value = 0.0 if cell is None else self._interval[cell]
        return value or None

    def set_interval(self, name: str, interval: float | None) -> bool:
        """Change ``name``'s limit (None: none); False when the task is not registered."""
        cell = self._index.get(name)
        if cell is None:
            return False
        with self._lock:
            was, now = bool(self._interval[cell]), bool(interval)
            self._interval[cell] = interval or 0.0
            self._limited.value += int(now) - int(was)
        return True

    def take(self, name: str, interval: float) -> float:
        """Reserve ``name``'s next slot; seconds until it (0.0: now)."""
        cell = self._index[name]
        if not self._lock.acquire(timeout=LOCK_TIMEOUT):
            log.error("rate-limit lock held for %.0fs (a process died holding it?); "
                      "starting %s without waiting", LOCK_TIMEOUT, name)
            return 0.0
        try:
            now = time.monotonic()
            slot = max(now, self._next[cell])
            self._next[cell] = slot + interval
        finally:
            self._lock.release()
        return slot - now


class RateLimits:
    """Each task's limits as seconds between starts.

    Global and queue limits are read once when the worker starts; per-worker
    ones live in :class:`WorkerSlots`, where remote control can change them.
    """

    def __init__(self, local: dict[str, float], shared: dict[str, float],
                 queues: dict[str, float] | None = None,
                 names: Sequence[str] = ()) -> None:
        self.shared = shared  # task name -> global interval
        self.queues = queues or {}  # queue name -> global interval
        self.slots = WorkerSlots(sorted({*names, *local}), local)

    @property
    def local(self) -> dict[str, float]:
        """The per-worker intervals now in force, by task name."""
        return {name: interval for name in self.slots._index
                if (interval := self.slots.interval(name)) is not None}

    @classmethod
    def for_app(cls, app: Conveyor) -> RateLimits | None:
        """The app's limits; None when per-worker limits are disabled and no global one
        is set (the worker then pays nothing).

        With per-worker limits enabled the object exists even when no task has
        one yet, so that ``control.rate_limit`` can add one to a running worker.
        """
        local: dict[str, float] = {}
        shared: dict[str, float] = {}
        try:
            default = parse_rate_limit(app.conf.task_default_rate_limit)
        except ConfigurationError as exc:
            raise ConfigurationError(f"task_default_rate_limit: {exc}") from None
        per_worker = not app.conf.worker_disable_rate_limits
        for name, task in app.tasks.items():
            rate = parse_rate_limit(task.options.rate_limit)
            rate = default if rate is None else rate
            if per_worker and rate:
                local[name] = 1.0 / rate
            global_rate = parse_rate_limit(task.options.global_rate_limit)
            if global_rate:
                shared[name] = 1.0 / global_rate
        queues = _queue_limits(app.conf.queue_global_rate_limits)
        if not per_worker and not shared and not queues:
            return None
        return cls(local, shared, queues, names=sorted(app.tasks) if per_worker else ())

    def gate(self, broker: Callable[[], Broker]) -> Gate:
        """A gate for one consumer (each keeps its own reservations)."""
        return Gate(self, broker)


class Gate:
    """Asked by the executor before a task starts: may it start now?

    A held message keeps the slot it was given; asked again for the same
    delivery, the gate answers from that reservation without taking another.
    """

    def __init__(self, limits: RateLimits, broker: Callable[[], Broker]) -> None:
        self.limits = limits
        self._broker = broker
        self._reserved: dict[str, float] = {}  # delivery id -> monotonic start time

    def hold(self, task: str, delivery: Delivery) -> float:
        """Seconds ``delivery`` must still wait before it starts (0.0: start now)."""
        start = self._reserved.get(delivery.id)
        if start is None:
            limits = self.limits
            if (limits.slots.interval(task) is None and task not in limits.shared
                    and delivery.queue not in limits.queues):
                return 0.0
            wait, taken = self._take(task, delivery.queue)
            if not taken:
                return wait  # ask again then: nothing is reserved meanwhile
            start = time.monotonic() + wait
        wait = start - time.monotonic()
        if wait > 0:
            self._reserved[delivery.id] = start
            return wait
        self._reserved.pop(delivery.id, None)
        return 0.0

    def forget(self, delivery: Delivery) -> None:
        """The delivery will not run here (handed back, lease lost)."""
        self._reserved.pop(delivery.id, None)

    def _take(self, task: str, queue: str) -> tuple[float, bool]:
        """Reserve every slot the message needs: (wait until the latest, whether taken).

        Global slots are asked for first: when they are not near, nothing is
        taken, not even the per-worker slot, and the wait says when to ask again.
        """
        wait = 0.0
        shared = [(f"task:{task}", self.limits.shared.get(task)),
                  (f"queue:{queue}", self.limits.queues.get(queue))]
        wanted = [(name, interval) for name, interval in shared if interval is not None]
        if wanted:
            try:
                wait = self._broker().take_rate_slot(wanted, GLOBAL_HORIZON)
            except BrokerError as exc:
                log.warning("could not take a global rate-limit slot for %s (%s); retrying",
                            task, exc)
                return BROKER_AWAY_RETRY, False
            if wait > GLOBAL_HORIZON:
                return max(0.01, wait - GLOBAL_HORIZON), False
        interval = self.limits.slots.interval(task)
        if interval is not None:
            wait = max(wait, self.limits.slots.take(task, interval))
        return wait, True


def _queue_limits(table: dict[str, str | float]) -> dict[str, float]:
    """``queue_global_rate_limits`` as seconds between starts, checked entry by entry."""
    out: dict[str, float] = {}
    for queue, limit in table.items():
        try:
            rate = parse_rate_limit(limit)
        except ConfigurationError as exc:
            raise ConfigurationError(f"queue_global_rate_limits[{queue!r}]: {exc}") from None
        if rate:
            out[queue] = 1.0 / rate
    return out
