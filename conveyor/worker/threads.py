"""Thread pools: N consumer threads in one process (``threads`` and ``async``).

The calling thread supervises, like the prefork supervisor: it renews leases,
enforces hard limits (by raising ``TimeLimitExceeded`` in the task's thread,
which a task blocked in C only sees when the call returns — use prefork when
hard limits must be absolute), and stops the consumers on shutdown.

The ``async`` pool is the same with one shared event loop: ``async def``
tasks run on it concurrently, scheduled from the consumer threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from conveyor.brokers.base import Delivery
from conveyor.context import Request
from conveyor.events import TaskClock
from conveyor.exceptions import BrokerError, TimeLimitExceeded
from conveyor.message import Message
from conveyor.task import Task
from conveyor.worker.acks import AckBuffer
from conveyor.worker.book import LeaseBook
from conveyor.worker.consumer import Consumer
from conveyor.worker.execute import ACK, Executor, Outcome, call_task
from conveyor.worker.timeouts import ThreadTimer, _raise_in

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")


class BookReporter:
    """A consumer thread's reports, written straight into the ledger.

    Finished messages are handed to ``ack`` (the pool's supervisor thread
    acknowledges them a few at a time, as the prefork supervisor does).
    """

    acks = True

    def __init__(self, book: LeaseBook, key: int, ack: Callable[[Delivery], None]) -> None:
        self.book, self.key, self.ack = book, key, ack
        self.clock = TaskClock()

    def flush(self) -> None:
        pass  # nothing is buffered

    def held(self, deliveries: Sequence[Delivery]) -> None:
        self.book.held(self.key, list(deliveries))

    def running(self, delivery: Delivery, task: str, hard_limit: float | None,
                message: Message | None = None, acked: bool = False) -> None:
        self.book.running(self.key, delivery.id, task, hard_limit,
                          self.clock.start(delivery, task, message=message), acked)

    def done(self, delivery: Delivery, outcome: Outcome) -> None:
        self.book.done(self.key, delivery.id, outcome.state,
                       self.clock.finish(delivery, outcome))
        if outcome.action == ACK:
            self.ack(delivery)


class ThreadPool:
    """Consumers in threads, supervised from the calling thread."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.book = LeaseBook()
        self.stop = threading.Event()
        self.threads: dict[int, threading.Thread] = {}
        self.stops: dict[int, threading.Event] = {}  # per slot, so the pool can shrink
        self._next_key = 0
        self._size = worker.concurrency
        self._size_lock = threading.Lock()
        self._resized = threading.Condition(self._size_lock)
        self._generation = 0  # passes of _apply_size so far
        self._last_extend = time.monotonic()
        self._last_beat = 0.0
        self.acks = AckBuffer(lambda: self.app.broker, worker.lease)
        self._acks_lock = threading.Lock()
        self._wake = threading.Event()  # set when the first pending ack arrives
        self._started: dict[int, float] = {}  # consumer key -> when its thread started
        self._crashes = 0  # consumer threads in a row that died young
        self._respawn_after = 0.0
        self.replaced = 0  # consumer threads replaced after a crash

    def _ack(self, delivery: Delivery) -> None:
        """Called from consumer threads; wakes the supervisor once per bunch."""
        with self._acks_lock:
            first = not len(self.acks)
            self.acks.add(delivery)
        if first:
            self._wake.set()

    def _flush_acks(self, force: bool = False) -> float:
        """Send due (or, with ``force``, all) acks; return how long to sleep at most."""
        with self._acks_lock:
            if force:
                self.acks.flush()
            else:
                self.acks.flush_due()
            return self.acks.wait_time(0.2)

    def run_task(self, task: Task, request: Request) -> Any:
        return call_task(task, request)

    def _consume(self, key: int) -> None:
        limits = self.worker.rate_limits
        executor = Executor(self.app, self.worker.hostname, timer=ThreadTimer(),
                            run_sync=self.run_task,
                            gate=limits.gate(lambda: self.app.broker) if limits else None)
        consumer = Consumer(executor, lambda: self.app.broker, self.worker.queues,
                            self.worker.prefetch, self.worker.lease,
                            BookReporter(self.book, key, self._ack), self.stops[key],
                            poll=self.worker.poll_interval)
        try:
            consumer.run()
        except BaseException:  # even SystemExit: the supervisor replaces this thread
            log.exception("consumer thread %d crashed; it will be replaced", key)
        finally:
            self._wake.set()  # let the supervisor notice at once

    def _start(self, key: int) -> None:
        self.book.add_slot(key)
        self.stops[key] = threading.Event()
        thread = threading.Thread(target=self._consume, args=(key,),
                                  name=f"conveyor-consumer-{key}", daemon=True)
        self.threads[key] = thread
        self._started[key] = time.monotonic()
        self._next_key = max(self._next_key, key + 1)
        thread.start()

    def _replace_dead(self) -> None:
        """Start a new consumer for each one that ended while the worker serves.

        A consumer thread only ends on its own after an internal error the
        consumer could not contain; what it held goes back to the broker (the
        running message counted as a delivery, as when a prefork child dies).
        Replacements of threads that die young are spaced out, as prefork's are.
        A thread retired by ``pool_shrink`` ends too: it is not replaced.
        """
        if self.worker.stopping or time.monotonic() < self._respawn_after:
            return
        for key, thread in list(self.threads.items()):
            if thread.is_alive():
                continue
            slot = self.book.remove_slot(key)
            if slot is not None:
                running = slot.running.delivery.id if slot.running else None
                for delivery in slot.held.values():
                    with contextlib.suppress(BrokerError):
                        self.app.broker.requeue(delivery, count=delivery.id == running)
            if self.stops[key].is_set():  # retired
                del self.threads[key], self.stops[key]
                continue
            young = time.monotonic() - self._started.get(key, 0.0) < 2.0
            self._crashes = self._crashes + 1 if young else 0
            if self._crashes > 3:
                delay = min(30.0, 0.5 * 2 ** (self._crashes - 3))
                log.error("consumer threads keep dying; waiting %.1fs before the next", delay)
                self._respawn_after = time.monotonic() + delay
            self.replaced += 1
            self._start(key)

    def resize(self, size: int) -> None:
        """Remote control's pool_grow/pool_shrink, applied by the supervising loop;
        returns once applied, so no task sent after the reply meets the old size."""
        with self._size_lock:
            self._size = size
            self.worker.concurrency = size
            wanted = self._generation + 1
            self._wake.set()
            self._resized.wait_for(lambda: self._generation >= wanted or self.worker.stopping,
                                   timeout=5.0)

    def _apply_size(self) -> None:
        """Start slots up to the size; ask the newest to stop after their task beyond it."""
        with self._size_lock:
            size = self._size
            serving = [k for k in self.threads if not self.stops[k].is_set()]
            for _ in range(size - len(serving)):
                self._start(self._next_key)
            for key in sorted(serving, reverse=True)[:max(0, len(serving) - size)]:
                self.stops[key].set()
            self._generation += 1
            self._resized.notify_all()

    def run(self) -> None:
        self._apply_size()
        while any(t.is_alive() for t in self.threads.values()) or not self.worker.stopping:
            if self.worker.stopping:
                self.begin_shutdown()
                if self.worker.cold or time.monotonic() > self.worker.shutdown_deadline:
                    break
            else:
                self._replace_dead()
                self._apply_size()
            self._periodic()
            timeout = self._flush_acks()
            self._wake.wait(min(0.05, timeout) if self.worker.stopping else timeout)
            self._wake.clear()
        self._flush_acks(force=True)
        self._hand_back_all()

    def begin_shutdown(self) -> None:
        self.stop.set()
        for stop in list(self.stops.values()):
            stop.set()

    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_extend >= self.worker.extend_every:
            self._last_extend = now
            held = self.book.all_held()
            if held:
                with contextlib.suppress(BrokerError):
                    self.app.broker.extend(held, self.worker.lease)
        for key, running in self.book.overdue():
            thread = self.threads.get(key)
            if thread is not None and thread.ident is not None:
                running.deadline = None  # raise once
                _raise_in(thread.ident, TimeLimitExceeded)
        if now - self._last_beat >= self.worker.heartbeat_interval:
            self._last_beat = now
            self.worker.heartbeat(self.book, len(self.threads))

    def _hand_back_all(self) -> None:
        for delivery in self.book.all_held():
            with contextlib.suppress(BrokerError):
                self.app.broker.requeue(delivery, count=False)


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
    from conveyor.context import push_request

    push_request(request)  # each asyncio task has its own context copy
    return await task(*request.args, **request.kwargs)
