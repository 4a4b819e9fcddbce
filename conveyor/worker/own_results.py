"""Results a consumer that acknowledges its own messages writes together (ADR 0038).

Where a delivery belongs to the connection that took it (RabbitMQ, ADR 0016)
a prefork child acknowledges its own messages, so its supervisor cannot write
their results in batches (:mod:`conveyor.worker.results`): each run wrote
its own result, one store round trip (and one server script) per task.

A consumer with more work in hand now leaves a success's fenced write here,
as a child on the other brokers leaves it to its supervisor, and goes on
with the next task.  What is held is written in one
:meth:`~conveyor.resultstores.base.ResultStore.set_many_fenced_and_join`
call, and only then is each message acknowledged (``after``), by the first of:

* the consumer's next reserve (it flushes first: the acks of what it holds
  are what lets the broker push it more, so a batch is at most a prefetch);
* the start of a task once the oldest has waited ``delay`` (5 ms);
* this buffer's thread (``conveyor-results``), woken by the first held
  result, once the oldest has waited ``delay``: a long task begun after them
  does not hold them back;
* the consumer stopping.

A lone result (nothing else in hand) is written by its own run, as before,
so latency at low load is unchanged.

The guarantees stay: a message is acknowledged only after its result was
written (or refused by the fence, ADR 0004).  A process that dies with
results held has neither written nor acknowledged them: the broker hands the
messages out again and they run again (their ``done`` was reported, so the
supervisor neither settles them nor counts them as unstarted).  A store
outage is retried until the oldest has waited a lease; then the messages are
handed back (``after`` with ``False``), as a run that cannot write its result
hands its message back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from conveyor import _pid
from conveyor.brokers.base import Delivery
from conveyor.resultstores.base import FencedWrite, ResultStore
from conveyor.worker.results import ResultBuffer

log = logging.getLogger("conveyor.worker")

#: ``after(deliveries, stored)``: written (``True``; some may have been refused by
#: the fence, which is logged), or not (``False``: the store stayed away for a
#: lease): acknowledge them, or hand them back.
After = Callable[[list[Delivery], bool], None]


class OwnResults:
    """Held successful results of one consumer, written together before their acks.

    The holding, the one-call write, the fence's log line and the retries
    through a store outage are the supervisor's :class:`ResultBuffer`'s; this
    adds when to write (``delay``, ``max_batch``, the thread) and what to do
    after: acknowledge, or hand back what a lease of outage gave up on."""

    def __init__(self, store: Callable[[], ResultStore], ttl: float, lease: float,
                 after: After, delay: float = 0.005, max_batch: int = 16) -> None:
        self._buffer = ResultBuffer(store, ttl, lease)
        self._after = after
        self.delay = delay
        self.max_batch = max_batch
        # One flush at a time (the consumer's thread or ours), and what is held.
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._thread_pid = 0

    def __len__(self) -> int:
        return len(self._buffer)

    def add(self, delivery: Delivery, write: FencedWrite) -> None:
        """Hold ``write``; ``delivery`` is acknowledged once it is written."""
        with self._lock:
            first = not self._buffer
            self._buffer.add(delivery, True, write)
            full = len(self._buffer) >= self.max_batch
        if full:
            self.flush()
        elif first:  # the thread saw none held, or is on its way to: wake it
            self._start_thread()
            self._wake.set()

    def due(self) -> bool:
        """Has the oldest held result waited ``delay``?  (A cheap, unlocked look.)"""
        return bool(self._buffer) and self._buffer.waited() >= self.delay

    def flush(self) -> bool:
        """Write every held result, then acknowledge each (``after``).  False when
        the store failed and they are kept for a later try (or, past a lease,
        handed back)."""
        with self._lock:
            if not self._buffer:
                return True
            holding = self._buffer.deliveries()
            stored = self._buffer.flush()
            if stored is None:
                if not self._buffer:  # a lease without the store: given up
                    log.warning("handing back the %d messages whose results could not be "
                                "stored", len(holding))
                    self._after(holding, False)
                return False
            if stored:
                self._after([s.delivery for s in stored if s.delivery is not None], True)
            return bool(stored)

    def _start_thread(self) -> None:
        if self._thread_pid != _pid.current():  # none yet in this process
            self._thread_pid = _pid.current()
            threading.Thread(target=self._flush_later, name="conveyor-results",
                             daemon=True).start()

    def _flush_later(self) -> None:
        """Flush once the oldest held result has waited ``delay``, when the consumer
        did not first (a task longer than that began after them)."""
        while True:
            self._wake.wait()
            self._wake.clear()
            while self._buffer:
                wait = max(self.delay - self._buffer.waited(), self._buffer.wait_time(60.0))
                if wait > 0:
                    time.sleep(wait)
                    continue
                try:
                    self.flush()
                except Exception:  # the consumer's flush tries again
                    log.exception("could not write held results")
                    time.sleep(self.delay)
