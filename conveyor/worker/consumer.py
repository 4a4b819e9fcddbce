"""The fetch-run-settle loop every pool runs (one per process or thread).

A consumer reserves up to ``prefetch`` messages, checks the batch against
revocations in one call, runs them one by one through the
:class:`~conveyor.worker.execute.Executor`, and settles each with the
broker right after it finishes (ack late, by default).  What it holds is
reported to a :class:`Reporter`, which keeps the leases renewed from
elsewhere (the supervisor process, or a lease-keeper thread), so a task that
blocks the interpreter cannot lose its lease.

A message over its task's rate limit is held, not refused (as Celery's
consumer holds it): it stays in this consumer's prefetch, its lease renewed
with the rest, while the consumer runs what else it holds, and it runs when
its slot comes (:mod:`conveyor.worker.ratelimit`).  Held messages count
against the prefetch, so a consumer full of them fetches no more.

A task with ``acks_late=False`` is acknowledged just before it runs (Celery's
at-most-once mode): if its process dies mid-task, the message is gone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from conveyor._message import Message
from conveyor._serialization import printable
from conveyor.brokers.base import Broker, Delivery
from conveyor.exceptions import BrokerError, ResultError
from conveyor.worker import announce
from conveyor.worker.execute import (
    ACK,
    ACKED,
    DEAD,
    HOLD,
    REDELIVER,
    REQUEUE,
    Executor,
    Outcome,
)
from conveyor.worker.own_results import OwnResults

log = logging.getLogger("conveyor.worker")
T = TypeVar("T")


def task_id_of(delivery: Delivery) -> str:
    """Broker ids carry a ``~N`` suffix per retry; revocations use the task id."""
    return delivery.id.split("~", 1)[0]


class Reporter(Protocol):
    """Receives what a consumer holds and runs (for leases, limits, counters).

    A reporter may buffer; ``flush`` is called before the consumer waits for
    more work.  When ``acks`` is true, the reporter's receiver acknowledges
    finished messages (``done`` with an ACK outcome) and the consumer does not;
    when ``writes`` is true too, it also writes the result an outcome carries
    (:attr:`Outcome.write`) before acknowledging it.
    """

    acks: bool
    writes: bool

    def held(self, deliveries: Sequence[Delivery]) -> None: ...
    def running(self, delivery: Delivery, task: str, hard_limit: float | None,
                message: Message | None = None, acked: bool = False) -> None: ...
    def done(self, delivery: Delivery, outcome: Outcome) -> None: ...
    def flush(self) -> None: ...


class Backoff:
    """Capped, jittered exponential backoff for broker reconnects."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base, self.cap, self.failures = base, cap, 0

    def next_delay(self) -> float:
        self.failures += 1
        return random.uniform(0, min(self.cap, self.base * 2 ** self.failures))

    def reset(self) -> None:
        self.failures = 0


class Consumer:
    """One fetch-run-settle loop; stops when ``stop`` is set."""

    def __init__(self, executor: Executor, broker_factory: Callable[[], Broker],
                 queues: Sequence[str], prefetch: int, lease: float, reporter: Reporter,
                 stop: threading.Event, max_tasks: int | None = None,
                 max_memory_kib: int | None = None, poll: float = 1.0) -> None:
        self.executor = executor
        self._broker_factory = broker_factory
        # The worker's own list when given one: remote control (add/cancel_consumer)
        # changes it in place, and the next reserve sees the change.
        self.queues = queues
        self.prefetch = max(1, prefetch)
        self.lease = lease
        self.reporter = reporter
        self.stop = stop
        self.max_tasks = max_tasks
        self.max_memory_kib = max_memory_kib
        self.poll = poll
        self.processed = 0
        self._backoff = Backoff()
        self._asked = 0.0  # monotonic time the last reserve was sent: its leases run from here
        self._wanted = 0  # how many the last reserve asked for
        # Rate-limited messages waiting for their slot: (due, n, reserved at, delivery).
        self._held: list[tuple[float, int, float, Delivery]] = []
        self._order = itertools.count()
        self._early_ack = frozenset(name for name, task in executor.app.tasks.items()
                                    if not task.acks_late)
        self._acked_early: set[str] = set()
        # Results may be left to the reporter's receiver, to be written together
        # with others before the ack (conveyor/worker/results.py).
        self._hand_off = reporter.acks and getattr(reporter, "writes", False)
        # A consumer that acknowledges its own messages (RabbitMQ's prefork children)
        # writes the results it holds together, before their acks (ADR 0038).
        self._written: Callable[[Delivery, bool], None] | None = getattr(
            reporter, "written", None)
        self._own = None if reporter.acks or self._written is None else OwnResults(
            lambda: executor.app.backend, executor.app.conf.result_expires, lease,
            self._after_write)

    @property
    def broker(self) -> Broker:
        return self._broker_factory()

    def run(self) -> None:
        """Loop until stopped or recycled (max tasks / max memory).

        Whatever ends the loop, what the reporter holds is sent: if the loop
        died, its supervisor then knows what to hand back at once.
        """
        try:
            while not self.stop.is_set() and not self._should_recycle():
                if self._own is not None:  # their acks let the broker push more
                    self._own.flush()
                self.reporter.flush()
                batch = self._reserve()
                if batch:
                    self._run_batch(batch)
                if self._held:
                    self._run_due()
        finally:
            self._release_held()
            if self._own is not None:
                self._own.flush()
            self._flush_acks()
            self.reporter.flush()

    def _flush_acks(self) -> None:
        """The loop ends: what ``ack_soon`` held back goes now, not with a reserve."""
        try:
            self.broker.flush_acks()
        except BrokerError as exc:
            log.warning("could not send the last acknowledgements (%s); the broker may hand "
                        "those messages out again", exc)

    def _reserve(self) -> list[Delivery]:
        want, timeout = self._want(), self.poll
        if self._held:  # wake for the first held message's slot; held ones fill prefetch
            want -= len(self._held)
            timeout = min(timeout, max(0.0, self._held[0][0] - time.monotonic()))
        queues = list(self.queues)
        if not queues or want <= 0:  # no queue (all cancelled by remote control), or full
            self.stop.wait(timeout)
            return []
        self._asked = time.monotonic()
        self._wanted = want
        try:
            batch = self.broker.reserve(queues, want, self.lease, timeout=timeout)
        except BrokerError as exc:
            delay = self._backoff.next_delay()
            log.warning("broker unavailable (%s); retrying in %.2fs", exc, delay)
            self.stop.wait(delay)
            return []
        self._backoff.reset()
        return self._still_consumed(batch)

    def _still_consumed(self, batch: list[Delivery]) -> list[Delivery]:
        """Hand back what a reserve begun before a cancel_consumer took from that queue."""
        current = self.queues
        dropped = [d for d in batch if d.queue not in current]
        for delivery in dropped:
            with contextlib.suppress(BrokerError):  # else its lease hands it out again
                self.broker.requeue(delivery, count=False)
        return [d for d in batch if d.queue in current] if dropped else batch

    def _want(self) -> int:
        if self.max_tasks is None:
            return self.prefetch
        return max(1, min(self.prefetch, self.max_tasks - self.processed))

    def _run_batch(self, batch: list[Delivery]) -> None:
        self.reporter.held(batch)
        reserved = self._asked
        backlog = len(batch) == self._wanted > 1
        revoked = self._revoked(batch)
        for index, delivery in enumerate(batch):
            if self.stop.is_set():
                self._hand_back(batch[index:])
                return
            held = self._still_held(delivery, reserved)
            if held is None:  # the broker is out of reach and the leases ran out
                for left in batch[index:]:
                    self.reporter.done(left, Outcome(REQUEUE, reason="lease lapsed"))
                return
            if not held:
                self.reporter.done(delivery, Outcome(REQUEUE, reason="lease lost"))
                continue
            # A result is handed off only while more work waits: later messages
            # of this batch, or a backlog (the reserve filled a prefetch of
            # several).  A lone result is written at once by its own run.
            more = (self._hand_off or self._own is not None) and (
                index + 1 < len(batch) or backlog)
            if self._own is not None and self._own.due():
                self._own.flush()
            outcome = self._execute(delivery, task_id_of(delivery) in revoked, more)
            self._conclude(delivery, outcome, reserved)

    def _conclude(self, delivery: Delivery, outcome: Outcome, reserved: float) -> None:
        """Keep a rate-limited message for its slot, or settle and report a finished one."""
        if outcome.action == HOLD:
            entry = (time.monotonic() + outcome.delay, next(self._order), reserved, delivery)
            heapq.heappush(self._held, entry)
            return
        if self._acked_early and delivery.id in self._acked_early:
            self._acked_early.discard(delivery.id)
            outcome = dataclasses.replace(outcome, action=ACKED)
        self._finish(delivery, outcome)
        self.processed += 1

    def _release_held(self) -> None:
        """The loop ends: hand back what waits for a rate-limit slot, at once."""
        held, self._held = [entry[3] for entry in self._held], []
        try:
            self._hand_back(held)
        except Exception:
            log.exception("could not hand back %d held messages; their leases will", len(held))

    def _run_due(self) -> None:
        """Run the held messages whose rate-limit slot has come."""
        now = time.monotonic()
        due: list[tuple[float, int, float, Delivery]] = []
        while self._held and self._held[0][0] <= now:
            due.append(heapq.heappop(self._held))
        if not due:
            return
        try:  # revoked while it waited? (the flag from the lease is old by now)
            revoked = set(self.broker.revoked([task_id_of(entry[3]) for entry in due]))
        except BrokerError:
            revoked = set()
        for index, (_, _, reserved, delivery) in enumerate(due):
            if self.stop.is_set():
                for entry in due[index:]:
                    heapq.heappush(self._held, entry)  # handed back when run() ends
                return
            was_revoked = task_id_of(delivery) in revoked
            held = self._still_held(delivery, reserved)
            if (was_revoked or not held) and self.executor.gate is not None:
                self.executor.gate.forget(delivery)  # it will not start: its slot goes unused
            if not held:
                self.reporter.done(delivery, Outcome(REQUEUE, reason="lease lost"))
                continue
            self._conclude(delivery, self._execute(delivery, was_revoked), reserved)

    def _finish(self, delivery: Delivery, outcome: Outcome) -> None:
        """Settle and report one message; nothing a message holds may end the loop."""
        if self._own is not None and outcome.write is not None:
            if outcome.action == ACK:
                try:  # reported first: the "written" report must follow its "done"
                    self.reporter.done(delivery, outcome)
                finally:
                    self._own.add(delivery, outcome.write)  # acknowledged once written
                return
            # Acknowledged before it ran (acks_late=False): nothing to hold back.
            self._write_now(delivery, outcome)
            outcome = dataclasses.replace(outcome, write=None)
        self._finish_settle(delivery, outcome)
        try:
            self.reporter.done(delivery, outcome)
        except Exception:
            log.exception("could not report the end of %s", delivery.id)

    def _write_now(self, delivery: Delivery, outcome: Outcome) -> None:
        """Write a result left in ``outcome`` whose message needs no ack from here
        (it was acknowledged before the run), retried through a blip for a lease."""
        write = outcome.write
        assert write is not None
        store, ttl = self.executor.app.backend, self.executor.app.conf.result_expires
        self._retried(lambda: store.set_many_fenced_and_join([(write, None)], ttl), ResultError,
                      f"could not store the result of {delivery.id}; it was acknowledged "
                      "before it ran, so it is not run again")

    def _after_write(self, deliveries: list[Delivery], stored: bool) -> None:
        """Held results were written (or refused by the fence): acknowledge their
        messages together; not ``stored``: the store stayed away, hand them back."""
        if stored:
            try:
                acked = self._ack_soon(deliveries)
            except Exception:
                log.exception("could not acknowledge %d messages; their leases will hand "
                              "them out again", len(deliveries))
                acked = [False] * len(deliveries)
        else:
            for delivery in deliveries:
                self._finish_settle(delivery, Outcome(REQUEUE, reason="result not stored"))
            acked = [False] * len(deliveries)
        if self._written is not None:
            for delivery, ok in zip(deliveries, acked, strict=True):
                self._written(delivery, ok)

    def _ack_soon(self, deliveries: list[Delivery]) -> list[bool]:
        """``Broker.ack_soon`` for several, retried through a blip (as ``_settle``)."""
        acked = self._retried(
            lambda: self.broker.ack_soon(deliveries), BrokerError,
            f"could not acknowledge {len(deliveries)} messages; their leases will hand "
            "them out again")
        if acked is None:
            return [False] * len(deliveries)
        for delivery, ok in zip(deliveries, acked, strict=True):
            if not ok:
                _ack_refused(delivery)
        return acked

    def _retried(self, call: Callable[[], T], errors: type[Exception], giving_up: str) -> T | None:
        """``call()``, tried again after each ``errors`` until a lease has passed
        (the message is then someone else's); after that, ``giving_up`` is logged
        with the error and None returned."""
        deadline = time.monotonic() + self.lease
        while True:
            try:
                return call()
            except errors as exc:
                if time.monotonic() > deadline:
                    log.error("%s (%s)", giving_up, exc)
                    return None
                time.sleep(self._backoff.next_delay())

    def _finish_settle(self, delivery: Delivery, outcome: Outcome) -> None:
        try:
            self._settle(delivery, outcome)
        except Exception:
            log.exception("could not settle %s; its lease will hand it out again", delivery.id)

    def _still_held(self, delivery: Delivery, reserved: float) -> bool | None:
        """Is a message that waited in the prefetch buffer for half a lease still ours?

        If this worker's renewals stalled meanwhile (its process was paused, a
        frozen process held the SQLite file's lock, the path to the broker went
        half-open), its lease may have run out and another consumer may be
        running it: then it is not started here.  ``None``: the broker cannot
        be reached and the lease, counted from when reserve was sent, has run
        out; the message stays with the broker, which hands it out again, so
        skipping it loses nothing.
        """
        # Where a lease is the connection holding the message (RabbitMQ), a dropped
        # connection ends it early: asking is a local check there, so always ask.
        if time.monotonic() - reserved < self.lease / 2 and \
                not self.broker.leases_follow_connection:
            return True
        try:
            [held] = self.broker.extend([delivery], self.lease)
        except BrokerError as exc:
            if time.monotonic() < reserved + self.lease:
                return True  # still within the lease it was reserved with
            log.warning("cannot renew the lease of %s (%s) and it has run out; not starting "
                        "it or the rest of its batch: the broker hands them out again",
                        delivery.id, exc)
            return None
        if not held:
            log.warning("lease of %s lapsed while it waited to start; another consumer has "
                        "it, so it is not started here", delivery.id)
        return held

    def _execute(self, delivery: Delivery, revoked: bool, hand_off: bool = False) -> Outcome:
        try:
            return self.executor.execute(delivery, revoked=revoked,
                                         on_start=self._on_start(delivery), hand_off=hand_off,
                                         joins=self._hand_off)
        except _AckRefused:
            return Outcome(REQUEUE, reason="lease lost before an early ack")
        except (BrokerError, ResultError) as exc:
            # The result store (or the broker, for a follow-up message) stayed
            # away: hand the message back to run again rather than let the
            # process die with it.
            log.error("could not record the outcome of %s (%s); handing it back", delivery.id, exc)
            announce.internal_error(self.executor, delivery, exc)
            return Outcome(REQUEUE, reason=f"outcome not recorded: {exc}")
        except Exception as exc:
            # A bug in Conveyor or a hook, not in the task: keep the consumer alive
            # and keep the message, visibly, where an operator can replay it.
            log.exception("internal error while running %s", delivery.id)
            announce.internal_error(self.executor, delivery, exc)
            return Outcome(DEAD, reason=f"internal error in the worker: {exc!r}")

    def _on_start(self, delivery: Delivery) -> Callable[..., None]:
        if not self._early_ack:
            return functools.partial(self.reporter.running, delivery)
        return functools.partial(self._starting, delivery)

    def _starting(self, delivery: Delivery, task: str, hard_limit: float | None,
                  message: Message | None = None) -> None:
        """Just before the task runs: acknowledge now when it has ``acks_late=False``."""
        if message is None or message.task not in self._early_ack:
            self.reporter.running(delivery, task, hard_limit, message)
            return
        if not self.broker.ack([delivery])[0]:
            log.warning("early ack of %s refused: its lease had lapsed and the message went "
                        "to another consumer; not running it here", delivery.id)
            raise _AckRefused(delivery.id)
        self._acked_early.add(delivery.id)
        self.reporter.running(delivery, task, hard_limit, message, acked=True)

    def _revoked(self, batch: Sequence[Delivery]) -> set[str]:
        if all(d.revoked is not None for d in batch):  # the broker checked while leasing
            return {task_id_of(d) for d in batch if d.revoked}
        try:
            return set(self.broker.revoked([task_id_of(d) for d in batch]))
        except BrokerError:
            return set()

    def _settle(self, delivery: Delivery, outcome: Outcome) -> None:
        """Tell the broker; retry through a blip, give up when the lease is gone."""
        self._retried(lambda: self._settle_once(delivery, outcome), BrokerError,
                      f"could not settle {delivery.id}; its lease will hand it out again")

    def _settle_once(self, delivery: Delivery, outcome: Outcome) -> None:
        broker = self.broker
        if outcome.action == ACK:
            if self.reporter.acks:
                return  # the reporter's receiver acknowledges it, with others
            if not broker.ack_soon([delivery])[0]:
                _ack_refused(delivery)
        elif outcome.action == REQUEUE:
            broker.requeue(delivery, delay=outcome.delay)
        elif outcome.action == REDELIVER:
            log.warning("handing %s back to run again: %s", delivery.id, outcome.reason)
            broker.requeue(delivery, count=True)
        elif outcome.action == DEAD:
            reason = printable(outcome.reason or "dead-lettered")
            log.error("dead-lettering %s: %s", delivery.id, reason)
            broker.dead_letter(delivery, reason)

    def _hand_back(self, deliveries: Sequence[Delivery]) -> None:
        """Warm shutdown: give back what was fetched but not started, at once."""
        for delivery in deliveries:
            if self.executor.gate is not None:
                self.executor.gate.forget(delivery)
            with contextlib.suppress(BrokerError):  # else its lease hands it out again
                self.broker.requeue(delivery, count=False)
            self.reporter.done(delivery, Outcome(REQUEUE, reason="shutdown"))

    def _should_recycle(self) -> bool:
        if self.max_tasks is not None and self.processed >= self.max_tasks:
            log.info("recycling after %d tasks (max_tasks_per_child)", self.processed)
            return True
        if self.max_memory_kib is not None and rss_kib() > self.max_memory_kib:
            log.info("recycling at %d KiB (max_memory_per_child=%d KiB)",
                     rss_kib(), self.max_memory_kib)
            return True
        return False


class _AckRefused(Exception):
    """An early ack found the lease gone: the message is another consumer's now."""


def rss_kib() -> int:
    """Resident memory of this process in KiB."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss // 1024)


def _ack_refused(delivery: Delivery) -> None:
    log.warning("ack of %s refused: its lease had lapsed or its connection broke; the "
                "broker may hand it out again", delivery.id)
