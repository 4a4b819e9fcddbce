"""Thread pools: N consumer threads in one process (``threads`` and ``async``).

The worker's main thread is their supervisor (:mod:`conveyor.worker.supervisor`),
as for prefork children.  A thread cannot be killed: a task past its hard
limit or terminated by a revoke gets :class:`SlotKilled` at its next
bytecode (a task blocked in C only when the call returns — use prefork when
hard limits must be absolute), its outcome is recorded at once, and a new
thread takes the slot.

The ``async`` pool is the same with one shared event loop: ``async def``
tasks run on it concurrently, scheduled from the consumer threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from conveyor._context import Request
from conveyor.brokers.base import Delivery
from conveyor.task import Task
from conveyor.worker.consumer import Consumer
from conveyor.worker.execute import Executor, SoftTimer, call_task
from conveyor.worker.supervisor import KILLED, SlotReporter, Supervisor, until_return
from conveyor.worker.timeouts import ThreadTimer, _raise_in

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")


class SlotKilled(SystemExit):
    """Ends a consumer thread the supervisor gave up (hard limit, terminate); a
    ``SystemExit``, so nothing on the way records it as the task's outcome."""


class _ThreadReporter(SlotReporter):
    """A consumer thread's reports, applied at once by the supervisor's ``apply``."""

    pickled = False

    def __init__(self, pool: ThreadPool, key: int) -> None:
        super().__init__(functools.partial(pool.apply, key))
        self.book, self.key = pool.book, key

    def returned(self, delivery: Delivery) -> None:
        """End the hard deadline; if the supervisor killed the task first, this
        thread is done: drop the exception it queued and raise it here."""
        if not self.book.returned(self.key, delivery.id):
            _raise_in(threading.get_ident(), None)
            raise SlotKilled


class ThreadPool(Supervisor):
    """Consumers in threads of the worker's process.

    A killed slot's thread is given up at once (its task gets
    :class:`SlotKilled` at its next bytecode) and a new thread takes its place.
    """

    # How a slot's task is interrupted: the gevent pool swaps these.
    timer: Callable[[], SoftTimer] = ThreadTimer
    reporter: type[_ThreadReporter] = _ThreadReporter

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.threads: dict[int, threading.Thread] = {}
        self.stops: dict[int, threading.Event] = {}
        self._exits: deque[tuple[int, int | None]] = deque()  # appended from threads
        self._wake = threading.Event()

    def run_task(self, task: Task, request: Request) -> Any:
        return call_task(task, request)

    def start_slot(self, key: int) -> None:
        self.stops[key] = threading.Event()
        thread = threading.Thread(target=self._consume, args=(key,),
                                  name=f"conveyor-consumer-{key}", daemon=True)
        self.threads[key] = thread
        thread.start()

    def stop_slot(self, key: int, now: bool = False, in_task: bool = False) -> None:
        if key not in self.threads:  # ended already: its end is being applied
            return
        self.stops[key].set()
        thread = self.threads[key]
        if in_task and thread.ident is not None:
            _raise_in(thread.ident, SlotKilled)
        if now:
            self._slot_ended(key, KILLED)

    def wake(self) -> None:
        self._wake.set()

    def wait(self, timeout: float) -> list[tuple[int, int | None]]:
        self._wake.wait(timeout)
        self._wake.clear()
        ended = [self._exits.popleft() for _ in range(len(self._exits))]
        for key, _ in ended:
            self.threads.pop(key, None)
            self.stops.pop(key, None)
        return ended

    def _slot_ended(self, key: int, code: int) -> None:
        self._exits.append((key, code))
        self._wake.set()

    def _consume(self, key: int) -> None:
        limits = self.worker.rate_limits
        reporter = self.reporter(self, key)
        executor = Executor(self.app, self.worker.hostname, timer=self.timer(),
                            run_sync=until_return(self.run_task, reporter.returned),
                            gate=limits.gate(lambda: self.app.broker) if limits else None)
        consumer = Consumer(executor, lambda: self.app.broker, self.worker.queues,
                            self.worker.prefetch, self.worker.lease, reporter, self.stops[key],
                            poll=self.worker.poll_interval)
        code = 1
        try:
            consumer.run()
            code = 0
        except SlotKilled:
            return  # the supervisor settled its task and replaced this thread
        except BaseException:  # even SystemExit: the supervisor replaces this thread
            log.exception("consumer thread %d crashed; it will be replaced", key)
        self._slot_ended(key, code)


class AsyncPool(ThreadPool):
    """Thread consumers plus one event loop that runs every ``async def`` task."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever,
                                             name="conveyor-event-loop", daemon=True)

    def run_task(self, task: Task, request: Request) -> Any:
        if not task.is_async:
            return call_task(task, request)
        future: Future[Any] = asyncio.run_coroutine_threadsafe(
            _with_request(task, request), self.loop)
        return future.result()

    def run(self) -> None:
        self._loop_thread.start()
        try:
            super().run()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


async def _with_request(task: Task, request: Request) -> Any:
    from conveyor._context import push_request

    push_request(request)  # each asyncio task has its own context copy
    return await task(*request.args, **request.kwargs)
