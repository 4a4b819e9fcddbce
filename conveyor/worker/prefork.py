"""The prefork pool: N child processes that fetch for themselves.

Children reserve, run and acknowledge on their own connections (no single
dispatcher in the way) and report over a pipe what they hold and run.  The
worker's main process is their supervisor (:mod:`conveyor.worker.supervisor`):
it renews their leases from its own connection, so a child stuck in C code
holding the GIL still keeps its lease; a child past its hard time limit is
killed with SIGKILL, and a child that dies has its messages handed back.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor.brokers.base import Delivery
from conveyor.events import TaskClock, TaskReport
from conveyor.message import Message
from conveyor.worker.consumer import Consumer
from conveyor.worker.execute import ACK, Executor, Outcome, call_task
from conveyor.worker.supervisor import Supervisor, until_return
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
        self._limited: str | None = None  # the running task, when it has a hard limit

    def held(self, deliveries: Sequence[Delivery]) -> None:
        self._pending.append(("held", list(deliveries)))

    def running(self, delivery: Delivery, task: str, hard_limit: float | None,
                message: Message | None = None, acked: bool = False) -> None:
        self._limited = delivery.id if hard_limit else None
        self._pending.append(("run", delivery.id, task, hard_limit,
                              self.clock.start(delivery, task, message=message).to_tuple(),
                              acked))
        self.flush()  # the supervisor must know at once: hard limits, a crash mid-task

    def returned(self, delivery: Delivery) -> None:
        """The task function returned: end its hard deadline at once."""
        if self._limited == delivery.id:
            self._limited = None
            self._pending.append(("ret", delivery.id))
            self.flush()

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
    reporter = PipeReporter(conn)
    executor = Executor(app, worker.hostname, timer=SignalTimer(),
                        run_sync=until_return(call_task, reporter.returned),
                        gate=limits.gate(lambda: app.broker) if limits else None)
    consumer = Consumer(
        executor, lambda: app.broker, worker.queues, worker.prefetch, worker.lease,
        reporter, stop, max_tasks=worker.max_tasks_per_child,
        max_memory_kib=worker.max_memory_per_child, poll=worker.poll_interval,
    )
    signals.worker_process_init.send(sender=None)
    try:
        consumer.run()
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    conn.close()


class _Child:
    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn


class PreforkPool(Supervisor):
    """Forks the children the supervisor asks for and reads their pipes."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.children: dict[int, _Child] = {}
        self.watch = ChildWatch()

    # -- the slots ---------------------------------------------------------
    def start_slot(self, key: int) -> None:
        signals.worker_before_create_process.send(sender=self)
        reader, writer = _CTX.Pipe(duplex=False)
        process = _CTX.Process(target=child_main, args=(self.worker, writer, key, os.getpid()),
                               name=f"conveyor-child-{key}", daemon=False)
        process.start()
        writer.close()
        self.children[key] = _Child(process, reader)
        self.watch.add(key, reader.fileno(), process.sentinel)
        log.debug("started child %d (pid %s)", key, process.pid)

    def stop_slot(self, key: int) -> None:
        self._signal(key, signal.SIGTERM)

    def kill_slot(self, key: int, in_task: bool) -> None:
        self._signal(key, signal.SIGKILL)

    def _signal(self, key: int, signum: int) -> None:
        child = self.children.get(key)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signum)

    def describe(self, key: int) -> str:
        child = self.children.get(key)
        return f"child pid {child.process.pid if child else '?'}"

    def refresh(self) -> None:
        """Children are forked with the worker's queues and task limits: replace them,
        each after its current task, so a remote-control change reaches them.

        Returns once the old children were told to stop, so no task started after
        the command's reply runs with the old settings."""
        self.recycle()

    # -- reports and exits -------------------------------------------------
    def wait(self, timeout: float) -> list[tuple[int, int | None]]:
        reports, exits = self.watch.wait(timeout)
        for key in reports:
            self._drain(key)
        return [(key, self._reap(key)) for key in exits]

    def drain(self) -> None:
        for key in list(self.children):
            self._drain(key)

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
            elif kind == "ret":
                self.book.returned(key, msg[1])
            elif kind == "done":
                delivery_id, state, ack, report = msg[1:]
                delivery = self.book.done(key, delivery_id, state,
                                          report and TaskReport(*report))
                if ack and delivery is not None:
                    self.ack(delivery)

    def _reap(self, key: int) -> int | None:
        """Read what the child said before dying, so 'done' is not mistaken for lost."""
        child = self.children.pop(key)
        with contextlib.suppress(EOFError, OSError):
            while child.conn.poll():
                self._handle(key, child.conn.recv())
        child.conn.close()
        self.watch.remove(key)
        child.process.join(1)
        return child.process.exitcode
