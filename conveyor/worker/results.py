"""Successful results a supervisor writes for its slots, together, before the ack.

A slot (prefork child, consumer thread) that finished a task while more
work waits in its hands does not wait for its result's round trip: when
nothing in its process waits for the write's verdict (no follow-ups, no
success hooks or signals; :meth:`Executor._may_defer`), it passes the
encoded, fenced write along with its "done" report and starts the next
task.  The supervisor writes whatever such results it has when it wakes —
those ready at the same moment, from every slot — in one
:meth:`~conveyor.resultstores.base.ResultStore.set_many_fenced_and_join` call, then
acknowledges their messages.  A lone result (nothing else in the slot's
hands) is written by its own run as before: no result waits for a batch.

A chord header whose success only joins its chord is handed off too, with
its join (ADR 0033): the store joins it in the same step as its write, and
only if the write was stored.  When that join completes the chord, the
supervisor sends the body, as the header's run would have, before it
acknowledges the header's message; if it cannot, the message goes back
unacknowledged and its next run's join gets the parts again.

The guarantees stay as they were:

* **Result before ack.**  A message is acknowledged only after its result
  was written (or refused by the fence).
* **Fencing.**  Each write is compared with the stored record's attempt, on
  its own (ADR 0004); a refused one is logged, as the run's own write would
  have been, and its ack is sent, to be refused by the broker's token check.
* **Nothing lost.**  Until it is written, the message is not acknowledged:
  if the supervisor dies first, the lease hands the message out again.  A
  store outage is retried until the oldest write has waited a lease, then
  left to the leases (the tasks run again: as when a run cannot write).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from conveyor.brokers.base import Delivery
from conveyor.exceptions import ResultError
from conveyor.resultstores.base import FencedWrite, JoinPart, ResultStore
from conveyor.resultstores.record import Attempt
from conveyor.worker.pending import LeaseBoundBuffer

log = logging.getLogger("conveyor.worker")


def as_report(write: FencedWrite) -> tuple[Any, ...]:
    """A write as a plain tuple, for a child's pipe (cheaper to pickle)."""
    return (write.task_id, write.state, write.payload, write.attempt.sent,
            write.attempt.retries, write.attempt.deliveries)


def from_report(report: tuple[Any, ...]) -> FencedWrite:
    task_id, state, payload, sent, retries, deliveries = report
    return FencedWrite(task_id, state, payload, Attempt(sent, retries, deliveries))


def join_report(join: JoinPart | None) -> tuple[Any, ...] | None:
    """A join as a plain tuple, for a child's pipe."""
    return None if join is None else tuple(join)


def join_from_report(report: tuple[Any, ...] | None) -> JoinPart | None:
    return None if report is None else JoinPart(*report)


class Pending(NamedTuple):
    """A result waiting in the buffer."""

    delivery: Delivery | None  # its message (None: the slot was given up)
    ack: bool  # whether to acknowledge that message once written
    write: FencedWrite
    join: JoinPart | None  # the chord join to make with it (a header that only joins)


class Stored(NamedTuple):
    """A result the buffer wrote (or the fence refused)."""

    delivery: Delivery | None
    ack: bool
    parts: list[bytes] | None  # every header's part when its join completed the chord


class ResultBuffer(LeaseBoundBuffer[Pending]):
    """Results waiting for their write; the supervisor flushes them when it wakes."""

    what = "store the results of %d tasks"

    def __init__(self, store: Callable[[], ResultStore], ttl: float, lease: float) -> None:
        super().__init__(lease)
        self._store = store
        self.ttl = ttl

    def add(self, delivery: Delivery | None, ack: bool, write: FencedWrite,
            join: JoinPart | None = None) -> None:
        """``ack``: acknowledge ``delivery`` once written; ``join``: made with the write."""
        self._add(Pending(delivery, ack, write, join))

    def deliveries(self) -> list[Delivery]:
        """The messages of the pending results (those a slot still holds)."""
        return [p.delivery for p in self._pending if p.delivery is not None]

    def wait_time(self, cap: float) -> float:
        """How long the caller may block before :meth:`flush` has work (none: ``cap``)."""
        if not self._pending:
            return cap
        return max(0.0, min(cap, self._retry_at - time.monotonic()))

    def flush(self, now: bool = False) -> list[Stored] | None:
        """Write every pending result (and make its join); say what each did.

        None when the store failed (the writes are kept, and tried again after
        a short pause unless ``now``).  A refused write is logged and reported
        as stored without parts: its message is acknowledged, to be refused by
        the broker's token check.
        """
        if not self._pending or (not now and time.monotonic() < self._retry_at):
            return []
        batch = self._take()
        try:
            written = self._store().set_many_fenced_and_join(
                [(p.write, p.join) for p in batch], self.ttl)
        except ResultError as exc:
            self._keep(batch, exc)
            return None
        self._retry_at = 0.0
        log.debug("stored %d results for the slots in one call", len(batch))
        for pending, done in zip(batch, written, strict=True):
            if not done.stored:
                log.warning("task [%s]: result refused, a later delivery of the message took "
                            "over (this worker held it past its lease)", pending.write.task_id,
                            extra={"task_id": pending.write.task_id})
        return [Stored(p.delivery, p.ack, done.parts) for p, done in zip(batch, written,
                                                                         strict=True)]
