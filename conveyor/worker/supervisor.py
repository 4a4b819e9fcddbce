"""The worker's supervisor: one loop for every pool.

A pool (prefork children, consumer threads) supplies only how to start a
slot, ask it to stop after its task, kill it now, and wait for its reports
and its end.  Everything else is here, once: the lease book fed by each
slot's :class:`SlotReporter`, lease renewal (a failure or a lost lease is
logged), hard time limits and revoke-terminate (the task is killed, its
slot replaced, ``TimeLimitExceeded`` or REVOKED recorded from here), what
a dead slot held, heartbeats, batched acknowledgements, resizing, shutdown.

A hard deadline ends the moment the task function returns
(:func:`until_return`), so a kill never hits the worker's own result write.
"""

from __future__ import annotations

import abc
import collections
import contextlib
import dataclasses
import logging
import operator
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor import _workflow as workflow
from conveyor._context import Request
from conveyor._events import FLUSH_AT_REPORTS, TaskClock, TaskReport, killed_report
from conveyor._message import Message
from conveyor.brokers.base import Delivery
from conveyor.exceptions import (
    BrokerError,
    ResultError,
    SerializationError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from conveyor.resultstores.base import FencedWrite, JoinPart
from conveyor.task import Task
from conveyor.worker.acks import AckBuffer
from conveyor.worker.board import Board
from conveyor.worker.book import LeaseBook, Running, Slot
from conveyor.worker.consumer import task_id_of
from conveyor.worker.execute import ACK, REDELIVER, Executor, Outcome, failed_outcome
from conveyor.worker.results import (
    ResultBuffer,
    as_report,
    from_report,
    join_from_report,
    join_report,
)

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")
_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Delivery)))
_POSTABLE = frozenset(("held", "run"))  # reports the supervisor may apply twice
KILLED = -signal.SIGKILL  # the exit code of a killed slot
#: A "done" report's ack field when the child acknowledged the message itself with
#: ``ack_soon`` (RabbitMQ, ADR 0035): no separate report per task says so.
SOON = "soon"
#: ... when the child holds the task's result, to write it before the ack (ADR 0038):
#: the report carries the write, which the supervisor makes if the child dies first.
HELD = "held"
_SOON_KEPT = 32  # per slot: finished deliveries whose held-back acks are remembered
SCALE_EVERY = 1.0  # seconds between autoscale checks (conveyor.worker.autoscale)
RunSync = Callable[[Task, Request], Any]


def until_return(run: RunSync, returned: Callable[[Delivery], None]) -> RunSync:
    """Wrap a pool's task call so its slot reports the return at once (the hard
    deadline ends there); ``returned`` raises if the supervisor killed it first."""
    def call(task: Task, request: Request) -> Any:
        try:
            return run(task, request)
        finally:
            if request.delivery is not None:
                returned(request.delivery)
    return call


class SlotReporter:
    """A slot's side: tells the supervisor what it holds and runs.

    Reports are plain tuples (a sixth of a dataclass's pickling cost, for a
    child's pipe) sent as one list: what came before (the batch just leased,
    the task just finished) goes with the next task's start or the flush
    before the consumer waits, about one message (one supervisor wake-up) per
    task.  The supervisor acknowledges ``done`` messages for all its slots a
    few at a time (:mod:`conveyor.worker.acks`), and first writes the results
    they carry, together (:mod:`conveyor.worker.results`).

    With a ``board`` (prefork children, ADR 0039), a task's start does not
    write to the pipe when all that waits to be told is what the slot holds
    and runs: those reports are posted on the board, which the supervisor
    reads when it needs them, and go down the pipe with the next flush,
    headed by ``("covers", seq)``.  A task with a hard time limit or an early
    ack, or a start with a finished task's report still waiting, is sent at
    once as before."""

    acks = True
    writes = True
    pickled = True  # reports cross a pipe (a thread's are applied as they are)

    def __init__(self, send: Callable[[list[tuple[Any, ...]]], None],
                 board: Board | None = None) -> None:
        self.send = send
        self.board = board
        self.clock = TaskClock()
        self._pending: list[tuple[Any, ...]] = []
        self._limited: str | None = None  # the running task, when it has a hard limit
        self._posted = 0  # the board's last sequence number
        self._covered = 0  # the last one the pipe said it covers

    def held(self, deliveries: Sequence[Delivery]) -> None:
        # As plain tuples: pickled (board, pipe), a fifth of a Delivery's cost.
        self._pending.append(("held", [_fields(d) for d in deliveries] if self.pickled
                              else list(deliveries)))

    def running(self, delivery: Delivery, task: str, hard_limit: float | None,
                message: Message | None = None, acked: bool = False) -> None:
        self._limited = delivery.id if hard_limit else None
        self._pending.append(("run", delivery.id, task, hard_limit,
                              self.clock.start(delivery, task, message=message).to_tuple(),
                              acked, time.monotonic()))
        # The supervisor must know at once of a hard limit (it kills) and of an
        # early ack (the message left the held set); anything else it reads
        # from the board when it needs it (a crash mid-task, leases, inspect).
        if hard_limit or acked or not self._post():
            self.flush()

    def _post(self) -> bool:
        """Post the pending reports on the board, if they are only "held" and "run"."""
        if self.board is None or any(r[0] not in _POSTABLE for r in self._pending):
            return False
        if not self.board.post(self._posted + 1, self._pending):
            return False
        self._posted += 1
        return True

    def returned(self, delivery: Delivery) -> None:
        """The task function returned: end its hard deadline at once."""
        if self._limited == delivery.id:
            self._limited = None
            self._pending.append(("ret", delivery.id))
            self.flush()

    def done(self, delivery: Delivery, outcome: Outcome) -> None:
        report = self.clock.finish(delivery, outcome)
        # ``acks`` false (RabbitMQ): the child acknowledged it itself, and a second
        # acknowledgement by the supervisor would cost a side-store write per task.
        self._pending.append(("done", delivery.id, outcome.state,
                              self.acks and outcome.action == ACK,
                              report and report.to_tuple(),
                              outcome.write and as_report(outcome.write),
                              join_report(outcome.join)))

    def flush(self) -> None:
        if self._pending:
            reports, self._pending = self._pending, []
            if self._posted != self._covered:  # what the board says is in this list
                self._covered = self._posted
                reports.insert(0, ("covers", self._posted))
            self.send(reports)


class Supervisor(abc.ABC):
    """Runs in the worker's main thread; a pool subclasses it with its slots."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.book = LeaseBook()
        self.acks = AckBuffer(lambda: self.app.broker, worker.lease)
        self.results = ResultBuffer(lambda: self.app.backend, self.app.conf.result_expires,
                                    worker.lease)
        # Consumer threads add acks and results, the supervisor flushes them.
        self._acks_lock = threading.Lock()
        self.executor = Executor(self.app, worker.hostname)  # records killed tasks
        self.replaced = 0  # slots replaced after a crash or a kill
        self._next_key = 0
        self._respawn_after = 0.0
        self._crashes = 0  # slots in a row that died young
        # Per slot (RabbitMQ children): the deliveries of its last "done" reports
        # whose acks are still to come (a held result, ADR 0038), and the last few
        # whose ack the child's ack_soon may still hold back (ADR 0035).
        self._last_done: dict[int, dict[str, tuple[Delivery, FencedWrite]]] = {}
        self._acked_soon: dict[int, collections.deque[Delivery]] = {}
        self._last_extend = time.monotonic()
        self._last_beat = 0.0
        self._last_scale = 0.0
        # Asked from the control thread, applied by the supervising loop.
        self._recycle = False  # replace every slot
        self._requests = threading.Lock()
        self._applied = threading.Condition(self._requests)
        self._generation = 0  # request batches applied so far

    # -- what a pool supplies -------------------------------------------------
    @abc.abstractmethod
    def start_slot(self, key: int) -> None:
        """Start a slot whose consumer reports under ``key``."""

    @abc.abstractmethod
    def stop_slot(self, key: int, now: bool = False, in_task: bool = False) -> None:
        """Stop the slot after its task, or ``now`` (``in_task``: ending the task
        it runs, called under the book's lock)."""

    @abc.abstractmethod
    def wait(self, timeout: float) -> list[tuple[int, int | None]]:
        """Take reports for up to ``timeout`` s; return the slots that ended
        with their exit code (0: stopped as asked, :data:`KILLED`, else crashed)."""

    def describe(self, key: int) -> str:
        """The slot in log lines."""
        return f"slot {key}"

    def drain(self) -> None:
        """Take every report sent so far (before renewing leases or killing)."""
        return None  # threads apply their reports themselves

    def observe(self) -> None:
        """Bring the book up to date with what slots run now, from any thread
        (``inspect``); a pool whose slots post on a board reads it here."""
        return None  # threads apply their reports themselves

    def wake(self) -> None:
        """Cut :meth:`wait` short."""
        return None

    # -- the loop -------------------------------------------------------------
    def run(self) -> None:
        self._fill()
        told = False  # begin_shutdown can be called from another thread, mid-_fill
        while self.book.slots or not self.worker.stopping:
            self._apply_requests()
            self._fill()
            with self._acks_lock:
                timeout = self.results.wait_time(self.acks.wait_time(0.2))
            for key, code in self.wait(timeout):
                self._ended(key, code)
            with self._acks_lock:
                self._write_results()
                self.acks.flush_due()
            self._periodic()
            if self.worker.stopping and not told:  # again: a slot may have started meanwhile
                told = True
                self.begin_shutdown()
            if self.worker.stopping and (self.worker.cold
                                         or time.monotonic() > self.worker.shutdown_deadline):
                self.begin_shutdown(now=True)
        deadline = time.monotonic() + min(5.0, self.worker.lease / 2)
        with self._acks_lock:  # a few tries; what stays unsent comes back with its lease
            while not (self._write_results(now=True) and self.acks.flush()) \
                    and time.monotonic() < deadline:
                time.sleep(min(0.1, self.acks.wait_time(0.5)))

    def apply(self, key: int, reports: list[tuple[Any, ...]]) -> None:
        """Apply one list of a slot's reports (see :class:`SlotReporter`)."""
        for msg in reports:
            kind = msg[0]
            if kind == "held":
                self.book.held(key, [d if isinstance(d, Delivery) else Delivery(*d)
                                     for d in msg[1]])
            elif kind == "run":
                delivery_id, task, hard_limit, report, acked, started = msg[1:]
                self.book.running(key, delivery_id, task, hard_limit, TaskReport(*report), acked,
                                  started)
            elif kind == "ret":
                self.book.returned(key, msg[1])
            elif kind == "done":
                self._done(key, *msg[1:])
            elif kind == "soon":  # its held result written, the child acks it (ADR 0038)
                held = self._last_done.get(key, {}).pop(msg[1], None)
                if held is not None:
                    self._soon(key, held[0])

    def _done(self, key: int, delivery_id: str, state: str | None, ack: bool | str,
              report: tuple[Any, ...] | None, write: tuple[Any, ...] | None,
              join: tuple[Any, ...] | None) -> None:
        """A slot's "done" report: write and acknowledge here, or note what its
        child acknowledges itself (``SOON``) or writes first (``HELD``)."""
        delivery = self.book.done(key, delivery_id, state,
                                  TaskReport(*report) if report else None)
        if ack == SOON:  # the child acknowledged it itself, within a few ms
            if delivery is not None:
                self._soon(key, delivery)
        elif ack == HELD:  # the child writes it, then acknowledges it
            if delivery is not None and write is not None:
                self._unacked_done(key, delivery, from_report(write))
        elif write is not None:  # written (even if the slot was given up), then acked
            self._write(delivery, bool(ack), from_report(write), join_from_report(join))
        elif ack and delivery is not None:
            self._ack(delivery)

    def _soon(self, key: int, delivery: Delivery) -> None:
        """The child acknowledges ``delivery`` with ``ack_soon``: settle it from here
        if the child dies (:meth:`_settle_acked_soon`)."""
        self._acked_soon.setdefault(key, collections.deque(maxlen=_SOON_KEPT)).append(delivery)

    def _unacked_done(self, key: int, delivery: Delivery, write: FencedWrite) -> None:
        """A finished delivery whose child holds its result, to write it and then
        acknowledge it (its "soon" report follows); the last ``_SOON_KEPT`` per
        slot are kept, with their writes, for :meth:`_settle_held_results`."""
        done = self._last_done.setdefault(key, {})
        done[delivery.id] = (delivery, write)
        if len(done) > _SOON_KEPT:
            del done[next(iter(done))]

    def _ack(self, delivery: Delivery) -> None:
        with self._acks_lock:
            first = not len(self.acks)
            self.acks.add(delivery)
        if first:
            self.wake()

    def _write(self, delivery: Delivery | None, ack: bool, write: FencedWrite,
               join: JoinPart | None) -> None:
        with self._acks_lock:
            first = not len(self.results)
            self.results.add(delivery, ack, write, join)
        if first:
            self.wake()

    def _write_results(self, now: bool = False) -> bool:
        """Called with the acks lock held: write the pending results, then queue
        their acks.  False if some are still pending (the store failed)."""
        if not len(self.results):
            return True
        for stored in self.results.flush(now) or ():
            if stored.parts is not None and not self._send_body(stored.delivery, stored.parts):
                continue
            if stored.ack and stored.delivery is not None:
                self.acks.add(stored.delivery)
        return not len(self.results)

    def _send_body(self, delivery: Delivery | None, parts: list[bytes]) -> bool:
        """A header's join made with its write here completed its chord: send the
        body, as the header's run would have (ADR 0033).  False if it could not:
        the message then goes back unacknowledged, and its next run's join gets
        the parts again (the store remembers the completing index) and sends it."""
        if delivery is None:
            log.error("a chord completed by a header whose slot was given up; its "
                      "message's next run sends the body")
            return False
        try:
            workflow.on_joined(self.app, self.executor.message_of(delivery.body), parts)
        except Exception as exc:
            log.error("could not send the chord body that %s completed (%s); handing it back",
                      delivery.id, exc, extra={"task_id": task_id_of(delivery)})
            self._hand_back([delivery], count=False)
            return False
        return True

    def _fill(self) -> None:
        if self.worker.stopping or time.monotonic() < self._respawn_after:
            return
        while sum(not s.retiring for s in self.book.slots.values()) < self.worker.concurrency:
            key, self._next_key = self._next_key, self._next_key + 1
            self.book.add_slot(key)
            self.start_slot(key)

    def begin_shutdown(self, now: bool = False) -> None:
        """Warm shutdown: every slot stops after its task; cold (``now``): at once,
        and what they held goes back uncounted."""
        for key, slot in list(self.book.slots.items()):
            if not slot.abandoned:
                slot.retiring, slot.abandoned = True, now
                self.stop_slot(key, now=now)

    # -- remote control: resizing and recycling -----------------------------
    def resize(self, size: int) -> None:
        """pool_grow/pool_shrink; returns once applied (extra slots end after their task)."""
        with self._requests:
            self.worker.concurrency = size
            self._wait_applied()

    def recycle(self) -> None:
        """Replace every slot, each after its task; returns once they were told."""
        with self._requests:
            self._recycle = True
            self._wait_applied()

    def _wait_applied(self) -> None:
        """Called with the lock held: wait (bounded) for the supervising loop to apply."""
        wanted = self._generation + 1
        self.wake()
        self._applied.wait_for(lambda: self._generation >= wanted or self.worker.stopping,
                               timeout=5.0)

    def _apply_requests(self) -> None:
        with self._requests:
            recycle, self._recycle = self._recycle, False
            serving = [k for k, slot in self.book.slots.items() if not slot.retiring]
            if recycle or len(serving) > self.worker.concurrency:
                self.drain()  # which slots are busy: an idle one retires first
                busy = {key for key, _ in self.book.running_tasks()}
                idle_first = sorted(serving, key=lambda k: k in busy)
                excess = len(serving) - self.worker.concurrency
                for key in idle_first if recycle else idle_first[:excess]:
                    self.book.slots[key].retiring = True
                    self.stop_slot(key)
            self._generation += 1
            self._applied.notify_all()

    # -- periodic duties ----------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_extend >= self.worker.extend_every:
            self._last_extend = now
            self._extend()
        if self.book.overdue():
            self.drain()  # a task that returned meanwhile is not killed
            for key, running in self.book.overdue():
                limit = (running.deadline or 0) - running.started
                self._kill(key, TimeLimitExceeded(f"hard time limit ({limit:g}s) exceeded"),
                           running)
        if self.worker.autoscaler is not None and now - self._last_scale >= SCALE_EVERY:
            self._last_scale = now
            self._autoscale(now)
        if now - self._last_beat >= self.worker.heartbeat_interval:
            self._last_beat = now
            self.drain()  # what runs now: revocations, the heartbeat, task-started events
            self._terminate_revoked()
            self.worker.heartbeat(self.book, len(self.book.slots))
        elif self.book.recorder.pending >= FLUSH_AT_REPORTS:
            # Smaller, more frequent event writes keep the supervisor's heap small;
            # a failed write restores its batch outside ``pending``, so no retry loop.
            self.worker.flush_events(self.book)

    def _autoscale(self, now: float) -> None:
        """``--autoscale``: size the pool to what runs plus what waits in its queues."""
        scaler = self.worker.autoscaler
        assert scaler is not None
        try:
            waiting = sum(s.ready for s in self.app.broker.stats(self.worker.queues))
        except BrokerError:
            return  # the broker is away: keep the size until it answers
        self.drain()
        busy = len(self.book.all_held())  # running and prefetched: the work at hand
        size = self.worker.concurrency
        wanted = scaler.want(size, busy, waiting, now)
        if wanted != size:
            log.info("autoscale: %s the pool from %d to %d slots (%d held, %d waiting)",
                     "growing" if wanted > size else "shrinking", size, wanted, busy, waiting)
            self.worker.concurrency = wanted  # the loop starts or retires slots

    def _extend(self) -> None:
        # Read what slots said first: a message acked since the last poll is no
        # longer held, and renewing it would be misreported as a lost lease.
        self.drain()
        held = self._renewable()
        if not held:
            return
        try:
            kept = self.app.broker.extend(held, self.worker.lease)
        except BrokerError as exc:
            log.warning("could not renew %d leases: %s", len(held), exc)
            return
        lost = [d.id for d, ok in zip(held, kept, strict=True) if not ok]
        if lost:
            log.warning("leases lost for %s (held past their lease?)", ", ".join(lost[:5]))

    def _renewable(self) -> list[Delivery]:
        """What this supervisor renews: everything its slots hold."""
        return self.book.all_held()

    def _terminate_revoked(self) -> None:
        running = self.book.running_tasks()
        if not running:
            return
        try:
            revoked = self.app.broker.revoked([task_id_of(r.delivery) for _, r in running])
        except BrokerError:
            return
        for key, task in running:
            if revoked.get(task_id_of(task.delivery)):
                self._kill(key, TaskRevokedError("terminated by revoke"), task)

    def _kill(self, key: int, exc: BaseException, running: Running) -> None:
        if self.book.claim(key, running, exc, lambda: self.stop_slot(key, True, True)):
            log.error("killing %s running %s[%s]: %s", self.describe(key), running.task,
                      running.delivery.id, exc)

    # -- slots that ended -----------------------------------------------------
    def _ended(self, key: int, code: int | None) -> None:
        held = self._last_done.pop(key, {})
        acked_soon = self._acked_soon.pop(key, ())
        slot = self.book.remove_slot(key)
        if slot is None:
            return
        if code != 0:
            self._settle_held_results(held.values())
            self._settle_acked_soon(acked_soon)
        running = slot.running
        if slot.abandoned or running is None:
            pass  # a cold shutdown hands everything back below, uncounted
        elif running.killed is not None and not running.returned:
            self._settle_killed(running.killed, running, slot.held)
        elif code != 0:
            self._lost(key, code, running, slot.held)
        self._hand_back(slot.held.values(), count=False)
        self._note_exit(slot, code, running is not None and running.killed is not None)

    def _lost(self, key: int, code: int | None, running: Running,
              held: dict[str, Delivery]) -> None:
        """A slot died mid-task (Celery: worker/request.py on_failure, WorkerLostError).

        ``task_reject_on_worker_lost`` (Conveyor's default: on) hands the
        message back, counted, so ``max_deliveries`` ends a task that keeps
        killing its slot.  Off, or when the message was acknowledged before
        the run (``acks_late=False``), the task fails with WorkerLostError.
        """
        delivery = held.pop(running.delivery.id, running.delivery)
        task = self._task_of(delivery)
        what = (f"{self.describe(key)} exited with {describe_exit(code)} while "
                f"running {running.task}[{delivery.id}]")
        if not running.acked and (task is None or task.reject_on_worker_lost):
            log.error("%s; handing it back", what)
            self._hand_back([delivery], count=True)
            return
        log.error("%s; recording WorkerLostError", what)
        lost = WorkerLostError(f"Worker exited prematurely: {describe_exit(code)}.")
        self._settle_killed(lost, running, held, task)

    def _settle_held_results(self, held: Iterable[tuple[Delivery, FencedWrite]]) -> None:
        """A child that died may have held the results of its last finished tasks,
        unwritten and unacknowledged (ADR 0038): write them from here (fenced by
        attempt, so a write the child made counts once), then settle their
        messages as :meth:`_settle_acked_soon` does, so their copies are dropped.
        If the store fails, they are left to run again: nothing is lost."""
        held = list(held)
        if not held:
            return
        try:
            self.app.backend.set_many_fenced_and_join([(w, None) for _, w in held],
                                                      self.app.conf.result_expires)
        except ResultError as exc:
            log.warning("could not store the results of %d tasks a slot that died had "
                        "finished (%s); they may run again", len(held), exc)
            return
        self._settle_acked_soon(delivery for delivery, _ in held)

    def _settle_acked_soon(self, deliveries: Iterable[Delivery]) -> None:
        """A child that died may have held back the acks of its last finished tasks
        (``Broker.ack_soon``, ADR 0035): settle them from here, so that the copies
        RabbitMQ hands out again are dropped, not run again (a redelivered copy waits
        ``redelivery_wait`` for this, ADR 0031).  They finished: settling is right
        whether or not the child's ack went out."""
        for delivery in deliveries:
            try:
                self.app.broker.ack([delivery])
            except BrokerError as exc:
                log.warning("could not settle %s, finished by a slot that died: %s; it "
                            "may run again", delivery.id, exc)

    def _task_of(self, delivery: Delivery) -> Task | None:
        try:
            name = Message.decode(delivery.body, self.app.conf.accept_content).task
        except SerializationError:
            return None
        return self.app.tasks.get(name)

    def _settle_killed(self, exc: BaseException, running: Running,
                       held: dict[str, Delivery], task: Task | None = None) -> None:
        """Record a task ended from here; then ack, hand back or dead-letter it."""
        delivery = held.pop(running.delivery.id, running.delivery)
        try:
            self.executor.record_killed(delivery.body, exc, delivery)
            state = "REVOKED" if isinstance(exc, TaskRevokedError) else "FAILURE"
            self.book.recorder.add(killed_report(delivery, running.task, state,
                                                 running.started, str(exc)))
            if running.acked:
                return
            task = task or self._task_of(delivery)
            outcome = failed_outcome(task, exc) if task is not None else None
            if outcome is None or outcome.action == ACK or isinstance(exc, TaskRevokedError):
                self.app.broker.ack([delivery])
            elif outcome.action == REDELIVER:
                self.app.broker.requeue(delivery, count=True)
            else:
                self.app.broker.dead_letter(delivery, outcome.reason or "failed")
        except (BrokerError, ResultError) as error:
            log.error("could not record %s for %s: %s", type(exc).__name__, delivery.id, error)

    def _hand_back(self, deliveries: Iterable[Delivery], count: bool) -> None:
        for delivery in list(deliveries):
            with contextlib.suppress(BrokerError):  # else the lease hands it out again
                self.app.broker.requeue(delivery, count=count)

    def _note_exit(self, slot: Slot, code: int | None, killed: bool) -> None:
        """Count replacements; space them out when slots keep dying young."""
        if slot.retiring or slot.abandoned or self.worker.stopping:
            return
        self.replaced += 1
        if code == 0 or killed:
            self._crashes = 0
            return
        self._crashes = self._crashes + 1 if time.monotonic() - slot.started < 2.0 else 0
        if self._crashes > 3:
            delay = min(30.0, 0.5 * 2 ** (self._crashes - 3))
            log.error("slots keep dying at start; waiting %.1fs before the next", delay)
            self._respawn_after = time.monotonic() + delay


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"
