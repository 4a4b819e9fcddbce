"""The prefork pool: a supervising process and N children that fetch for themselves.

Children reserve, run and acknowledge on their own connections (no single
dispatcher in the way) and report over a pipe what they hold and run.  The
supervisor keeps those leases renewed from its own connection, so a child
stuck in C code holding the GIL still keeps its lease; it kills a child past
its hard time limit, and when a child dies it hands the child's messages
back at once: the running one counted as a delivery (so a task that keeps
killing its process is dead-lettered after ``task_max_deliveries``), the
prefetched ones not.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.brokers.base import Delivery
from conveyor.events import TaskClock, TaskReport, killed_report
from conveyor.exceptions import (
    BrokerError,
    SerializationError,
    TaskRevokedError,
    TimeLimitExceeded,
    WorkerLostError,
)
from conveyor.message import Message
from conveyor.task import Task
from conveyor.worker.acks import AckBuffer
from conveyor.worker.book import LeaseBook, Running
from conveyor.worker.consumer import Consumer, task_id_of
from conveyor.worker.execute import ACK, REDELIVER, Executor, Outcome, failed_outcome
from conveyor.worker.timeouts import SignalTimer
from conveyor.worker.watch import ChildWatch

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")
_CTX = multiprocessing.get_context("fork")


class PipeReporter:
    """A child's side of the pipe: tells the supervisor what it holds and runs.

    Task reports travel as plain tuples (a sixth of a dataclass's pickling
    cost).  Reports are buffered and sent as one list per pipe message: what came
    before (the batch just leased, the task just finished) goes with the
    next task's start, or with the flush before the consumer waits for
    more.  That is about one message (one supervisor wake-up) per task
    instead of two and a quarter.  ``done`` carries whether the supervisor
    should acknowledge the message, which it does for all its children a
    few at a time (:mod:`conveyor.worker.acks`).
    """

    acks = True

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.clock = TaskClock()
        self._pending: list[tuple[Any, ...]] = []

    def held(self, deliveries: Sequence[Delivery]) -> None:
        self._pending.append(("held", list(deliveries)))

    def running(self, delivery: Delivery, task: str, hard_limit: float | None,
                message: Message | None = None, acked: bool = False) -> None:
        self._pending.append(("run", delivery.id, task, hard_limit,
                              self.clock.start(delivery, task, message=message).to_tuple(),
                              acked))
        self.flush()  # the supervisor must know at once: hard limits, a crash mid-task

    def done(self, delivery: Delivery, outcome: Outcome) -> None:
        report = self.clock.finish(delivery, outcome)
        self._pending.append(("done", delivery.id, outcome.state, outcome.action == ACK,
                              report and report.to_tuple()))

    def flush(self) -> None:
        if self._pending:
            reports, self._pending = self._pending, []
            self.conn.send(reports)


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this child if the supervisor dies.

    A supervisor that died between the fork and the ``prctl`` call would not
    trigger it, and the orphan would go on taking tasks for no one: so the
    child checks that its parent is still the one that forked it.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def child_main(worker: Worker, conn: Connection, index: int, parent: int) -> None:
    """Entry point of a child process (``parent``: the supervisor's pid)."""
    _die_with_parent(parent)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    app = worker.app
    limits = worker.rate_limits
    executor = Executor(app, worker.hostname, timer=SignalTimer(),
                        gate=limits.gate(lambda: app.broker) if limits else None)
    consumer = Consumer(
        executor, lambda: app.broker, worker.queues, worker.prefetch, worker.lease,
        PipeReporter(conn), stop, max_tasks=worker.max_tasks_per_child,
        max_memory_kib=worker.max_memory_per_child, poll=worker.poll_interval,
    )
    signals.worker_process_init.send(sender=None)
    try:
        consumer.run()
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    conn.close()


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection, started: float) -> None:
        self.process = process
        self.conn = conn
        self.started = started
        self.kill_reason: tuple[BaseException, Running] | None = None
        self.retiring = False  # told to stop after its task (pool shrink or recycle)


class PreforkPool:
    """Supervises the children; runs in the worker's main process."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.app = worker.app
        self.book = LeaseBook()
        self.children: dict[int, _Child] = {}
        self._next_key = 0
        self._respawn_after = 0.0
        self._crashes = 0
        self._last_extend = time.monotonic()
        self._last_beat = 0.0
        self.executor = Executor(self.app, worker.hostname)
        self.acks = AckBuffer(lambda: self.app.broker, worker.lease)
        self.watch = ChildWatch()
        # Asked from the control thread, applied by the supervising loop.
        self._retire = 0  # children to stop (pool_shrink)
        self._recycle = False  # replace every child (its queues or task limits changed)
        self._requests = threading.Lock()
        self._applied = threading.Condition(self._requests)
        self._generation = 0  # request batches applied so far

    # -- children ----------------------------------------------------------
    def spawn(self) -> None:
        key = self._next_key
        self._next_key += 1
        signals.worker_before_create_process.send(sender=self)
        reader, writer = _CTX.Pipe(duplex=False)
        self.book.add_slot(key)
        process = _CTX.Process(target=child_main, args=(self.worker, writer, key, os.getpid()),
                               name=f"conveyor-child-{key}", daemon=False)
        process.start()
        writer.close()
        self.children[key] = _Child(process, reader, time.monotonic())
        self.watch.add(key, reader.fileno(), process.sentinel)
        log.debug("started child %d (pid %s)", key, process.pid)

    def _fill(self) -> None:
        if self.worker.stopping or time.monotonic() < self._respawn_after:
            return
        while len(self.children) - len(self._stopping()) < self.worker.concurrency:
            self.spawn()

    # -- the loop ----------------------------------------------------------
    def resize(self, size: int) -> None:
        """Remote control's pool_grow/pool_shrink (extra children stop after their task)."""
        with self._requests:
            self._retire += max(0, self.worker.concurrency - size)
            self.worker.concurrency = size
            self._wait_applied()

    def refresh(self) -> None:
        """Children are forked with the worker's queues and task limits: replace them,
        each after its current task, so a remote-control change reaches them.

        Returns once the old children were told to stop, so no task started after
        the command's reply runs with the old settings."""
        with self._requests:
            self._recycle = True
            self._wait_applied()

    def _wait_applied(self) -> None:
        """Called with the lock held: wait (bounded) for the supervising loop to apply."""
        wanted = self._generation + 1
        self._applied.wait_for(lambda: self._generation >= wanted or self.worker.stopping,
                               timeout=5.0)

    def _apply_requests(self) -> None:
        with self._requests:
            retire, self._retire = self._retire, 0
            recycle, self._recycle = self._recycle, False
            if retire or recycle:
                self._stop_children(retire, recycle)
            self._generation += 1
            self._applied.notify_all()

    def _stop_children(self, retire: int, recycle: bool) -> None:
        busy = {key for key, _ in self.book.running_tasks()}
        serving = [k for k, child in self.children.items() if not child.retiring]
        idle_first = sorted(serving, key=lambda k: k in busy)
        for key in idle_first if recycle else idle_first[:retire]:
            child = self.children[key]
            child.retiring = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGTERM)

    def _stopping(self) -> list[int]:
        return [k for k, child in self.children.items() if child.retiring]

    def run(self) -> None:
        self._fill()
        while self.children or not self.worker.stopping:
            self._apply_requests()
            self._fill()
            self._poll(self.acks.wait_time(0.2))
            self.acks.flush_due()
            self._periodic()
            if self.worker.stopping:
                self._shutdown_step()
        self._flush_acks_before_exit()

    def _flush_acks_before_exit(self) -> None:
        """A few tries; what is still unsent comes back when its lease runs out."""
        deadline = time.monotonic() + min(5.0, self.worker.lease / 2)
        while not self.acks.flush() and time.monotonic() < deadline:
            time.sleep(self.acks.wait_time(0.5))

    def _poll(self, timeout: float) -> None:
        reports, exits = self.watch.wait(timeout)
        for key in reports:
            self._drain(key)
        for key in exits:
            self._reap(key)

    def _drain(self, key: int) -> None:
        child = self.children.get(key)
        if child is None:
            return
        try:
            while self.watch.readable(key):
                self._handle(key, child.conn.recv())
        except (EOFError, OSError):
            pass  # the child is gone; its sentinel reports that

    def _handle(self, key: int, reports: list[tuple[Any, ...]]) -> None:
        """Apply one pipe message: a list of reports (see :class:`PipeReporter`)."""
        for msg in reports:
            kind = msg[0]
            if kind == "held":
                self.book.held(key, msg[1])
            elif kind == "run":
                delivery_id, task, hard_limit, report, acked = msg[1:]
                self.book.running(key, delivery_id, task, hard_limit, TaskReport(*report), acked)
            elif kind == "done":
                delivery_id, state, ack, report = msg[1:]
                delivery = self.book.done(key, delivery_id, state,
                                          report and TaskReport(*report))
                if ack and delivery is not None:
                    self.acks.add(delivery)

    # -- deaths ------------------------------------------------------------
    def _reap(self, key: int) -> None:
        child = self.children.pop(key)
        self._drain_closed(key, child)
        self.watch.remove(key)
        child.process.join(1)
        slot = self.book.remove_slot(key)
        code = child.process.exitcode
        if slot is None:
            return
        if child.kill_reason is not None:
            self._settle_killed(child.kill_reason, slot.held)
        elif code != 0 and slot.running is not None:
            self._lost(child, code, slot.running, slot.held)
        self._hand_back(slot.held.values(), count=False)
        self._note_exit(child, code)

    def _drain_closed(self, key: int, child: _Child) -> None:
        """Read what the child said before dying, so 'done' is not mistaken for lost."""
        with contextlib.suppress(EOFError, OSError):
            while child.conn.poll():
                self._handle(key, child.conn.recv())
        child.conn.close()

    def _lost(self, child: _Child, code: int | None, running: Running,
              held: dict[str, Delivery]) -> None:
        """A child died mid-task (Celery: worker/request.py on_failure, WorkerLostError).

        ``task_reject_on_worker_lost`` (Conveyor's default: on) hands the
        message back, counted, so ``max_deliveries`` ends a task that keeps
        killing its process.  Off, or when the message was acknowledged before
        the run (``acks_late=False``), the task fails with WorkerLostError.
        """
        delivery = held.pop(running.delivery.id, running.delivery)
        task = self._task_of(delivery)
        what = (f"child pid {child.process.pid} exited with {_describe_exit(code)} while "
                f"running {running.task}[{delivery.id}]")
        if not running.acked and (task is None or task.reject_on_worker_lost):
            log.error("%s; handing it back", what)
            self._hand_back([delivery], count=True)
            return
        log.error("%s; recording WorkerLostError", what)
        lost = WorkerLostError(f"Worker exited prematurely: {_describe_exit(code)}.")
        self._settle_killed((lost, running), held, task)

    def _task_of(self, delivery: Delivery) -> Task | None:
        try:
            name = Message.decode(delivery.body, self.app.conf.accept_content).task
        except SerializationError:
            return None
        return self.app.tasks.get(name)

    def _settle_killed(self, reason: tuple[BaseException, Running],
                       held: dict[str, Delivery], task: Task | None = None) -> None:
        exc, running = reason
        delivery = held.pop(running.delivery.id, running.delivery)
        try:
            self.executor.record_killed(delivery.body, exc, delivery)
            state = "REVOKED" if isinstance(exc, TaskRevokedError) else "FAILURE"
            self.book.recorder.add(killed_report(delivery, running.task, state,
                                                 running.started, str(exc)))
            if not running.acked:
                self._settle_failed(delivery, exc, task or self._task_of(delivery))
        except BrokerError as error:
            log.error("could not record %s for %s: %s", type(exc).__name__, delivery.id, error)

    def _settle_failed(self, delivery: Delivery, exc: BaseException, task: Task | None) -> None:
        """Ack, or (``acks_on_failure_or_timeout=False``) hand back or dead-letter."""
        outcome = failed_outcome(task, exc) if task is not None else None
        if outcome is None or outcome.action == ACK or isinstance(exc, TaskRevokedError):
            self.app.broker.ack([delivery])
        elif outcome.action == REDELIVER:
            self.app.broker.requeue(delivery, count=True)
        else:
            self.app.broker.dead_letter(delivery, outcome.reason or "failed")

    def _hand_back(self, deliveries: Any, count: bool) -> None:
        for delivery in list(deliveries):
            with contextlib.suppress(BrokerError):  # else the lease hands it out again
                self.app.broker.requeue(delivery, count=count)

    def _note_exit(self, child: _Child, code: int | None) -> None:
        if code == 0 or child.kill_reason is not None or self.worker.stopping:
            self._crashes = 0
            return
        lived = time.monotonic() - child.started
        self._crashes = self._crashes + 1 if lived < 2.0 else 0
        if self._crashes > 3:
            delay = min(30.0, 0.5 * 2 ** (self._crashes - 3))
            log.error("children keep dying at start; waiting %.1fs before the next", delay)
            self._respawn_after = time.monotonic() + delay

    # -- periodic duties ---------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        if now - self._last_extend >= self.worker.extend_every:
            self._last_extend = now
            self._extend()
        for key, running in self.book.overdue():
            limit = (running.deadline or 0) - running.started
            self._kill(key, TimeLimitExceeded(f"hard time limit ({limit:g}s) exceeded"), running)
        if now - self._last_beat >= self.worker.heartbeat_interval:
            self._last_beat = now
            self._terminate_revoked()
            self.worker.heartbeat(self.book, len(self.children))

    def _extend(self) -> None:
        # Read what children said first: a message acked since the last poll is no
        # longer held, and renewing it would be misreported as a lost lease.
        for key in list(self.children):
            self._drain(key)
        held = self.book.all_held()
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
        child = self.children.get(key)
        if child is None or child.kill_reason is not None:
            return
        log.error("killing child pid %s running %s[%s]: %s", child.process.pid, running.task,
                  running.delivery.id, exc)
        child.kill_reason = (exc, running)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.process.pid or 0, signal.SIGKILL)

    # -- shutdown ----------------------------------------------------------
    def begin_shutdown(self) -> None:
        for child in list(self.children.values()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGTERM)

    def _shutdown_step(self) -> None:
        if self.worker.cold or time.monotonic() > self.worker.shutdown_deadline:
            self.kill_all()

    def kill_all(self) -> None:
        """Cold shutdown: kill children now; their messages go back at once."""
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGKILL)
        for key in list(self.children):
            child = self.children.pop(key)
            child.process.join(5)
            self._drain_closed(key, child)  # what it finished is acknowledged, not redone
            self.watch.remove(key)
            slot = self.book.remove_slot(key)
            if slot is not None:
                self._hand_back(slot.held.values(), count=False)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit code"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"
