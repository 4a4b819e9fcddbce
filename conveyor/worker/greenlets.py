"""The gevent pool: N consumers as greenlets in one patched process.

``conveyor worker -P gevent`` starts in a process gevent patched first
(:mod:`conveyor._greenlets`), so sockets, ``time.sleep``, locks and events
switch greenlets instead of blocking: hundreds of I/O-bound tasks wait
together in one process.  The pool is the thread pool with greenlets for
threads; what differs is how a task is interrupted.

- Soft limit: a ``gevent.Timeout`` raising ``SoftTimeLimitExceeded`` in the
  task's greenlet (:class:`GreenletTimer`).
- Hard limit and revoke-terminate: the supervisor kills the greenlet
  (``Greenlet.kill`` raises :class:`~conveyor.worker.threads.SlotKilled` in
  it) and starts another in its slot.

Both arrive only when the task yields to the hub (any patched I/O or
sleep).  A CPU-bound task never yields: until it returns, every other task,
lease renewal and the limits themselves wait.  Such tasks belong on prefork.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gevent

from conveyor.brokers.base import Delivery
from conveyor.exceptions import SoftTimeLimitExceeded
from conveyor.worker.supervisor import KILLED
from conveyor.worker.threads import SlotKilled, ThreadPool, _ThreadReporter

if TYPE_CHECKING:
    from conveyor.worker.main import Worker


class GreenletTimer:
    """Soft limit for the greenlet that arms it."""

    def __init__(self) -> None:
        self._timeout: Any = None

    def arm(self, seconds: float) -> None:
        self._timeout = gevent.Timeout(seconds, SoftTimeLimitExceeded("soft time limit exceeded"))
        self._timeout.start()

    def disarm(self) -> None:
        if self._timeout is not None:
            self._timeout.close()
            self._timeout = None


class _GreenletReporter(_ThreadReporter):
    def __init__(self, pool: GeventPool, key: int) -> None:
        super().__init__(pool, key)
        self.killed = pool.killed

    def returned(self, delivery: Delivery) -> None:
        """End the hard deadline, unless the supervisor killed the task first.

        A killed greenlet gets ``SlotKilled`` at once (unlike a thread, blocked
        until its call returns) and passes here on its way out, before the
        supervisor applied its end: it must not report a return the kill
        preceded."""
        if self.key in self.killed or not self.book.returned(self.key, delivery.id):
            raise SlotKilled


class GeventPool(ThreadPool):
    """Consumers in greenlets; a killed slot's greenlet gets ``SlotKilled``."""

    timer = GreenletTimer
    reporter = _GreenletReporter

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.greenlets: dict[int, Any] = {}
        self.killed: set[int] = set()  # slots whose task the supervisor ended

    def start_slot(self, key: int) -> None:
        import threading  # patched: an Event that switches greenlets

        self.stops[key] = threading.Event()
        self.greenlets[key] = gevent.spawn(self._consume, key)

    def stop_slot(self, key: int, now: bool = False, in_task: bool = False) -> None:
        if key not in self.greenlets:  # ended already: its end is being applied
            return
        self.stops[key].set()
        if in_task:  # the supervisor runs, so the task's greenlet waits at a switch
            self.killed.add(key)
            self.greenlets[key].kill(SlotKilled, block=False)
        if now:
            self._slot_ended(key, KILLED)

    def wait(self, timeout: float) -> list[tuple[int, int | None]]:
        ended = super().wait(timeout)
        for key, _ in ended:
            self.greenlets.pop(key, None)
            self.killed.discard(key)
        return ended
