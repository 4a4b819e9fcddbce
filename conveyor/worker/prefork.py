"""The prefork pool: N child processes that fetch for themselves.

Children reserve, run and acknowledge on their own connections (no single
dispatcher in the way) and report over a pipe what they hold and run.  The
worker's main process is their supervisor (:mod:`conveyor.worker.supervisor`):
it renews their leases from its own connection, so a child stuck in C code
holding the GIL still keeps its lease; a child past its hard time limit is
killed with SIGKILL, and a child that dies has its messages handed back.

On a broker whose deliveries belong to the connection that took them
(``Broker.leases_follow_connection``: RabbitMQ), the supervisor cannot
acknowledge or renew for a child: each child acknowledges its own messages
and renews what it holds from a thread of its own (:class:`OwnLeases`),
which also keeps its connection's heartbeats answered during a long task.
A child that dies loses its connection, and the broker hands its messages
out again at once.  The supervisor holds the side-store lease of each
running task in its child's name (ADR 0034), so a child holding the GIL
past its connection's heartbeat (half the lease) keeps its task.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Callable, Iterable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any, NamedTuple

from conveyor import signals
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError
from conveyor.worker.board import Board
from conveyor.worker.consumer import Consumer
from conveyor.worker.execute import ACK, Executor, Outcome, call_task
from conveyor.worker.results import as_report
from conveyor.worker.supervisor import HELD, SOON, SlotReporter, Supervisor, until_return
from conveyor.worker.timeouts import SignalTimer
from conveyor.worker.trim import trim
from conveyor.worker.watch import ChildWatch

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")
_CTX = multiprocessing.get_context("fork")


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


def stop_on_sigterm(stop: threading.Event) -> Callable[..., None]:
    """A child's SIGTERM handler: set ``stop``, once.

    A child gets SIGTERM twice when both its supervisor and whoever stops the
    process group send one; the second, run inside the first handler's
    ``Event.set()``, would wait forever for the lock that call holds, and the
    child would never exit.  So the first one ignores the rest."""
    def on_term(*_: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop.set()
    return on_term


def child_main(worker: Worker, conn: Connection, index: int, parent: int,
               board: Board | None = None) -> None:
    """Entry point of a child process (``parent``: the supervisor's pid; ``board``:
    where it posts what it holds and runs, ADR 0039)."""
    _die_with_parent(parent)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, stop_on_sigterm(stop))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    app = worker.app
    limits = worker.rate_limits
    own = app.broker.leases_follow_connection
    send = reports_sender(conn)
    reporter = OwnLeases(send, board) if own else SlotReporter(send, board)
    executor = Executor(app, worker.hostname, timer=SignalTimer(),
                        run_sync=until_return(call_task, reporter.returned),
                        gate=limits.gate(lambda: app.broker) if limits else None)
    consumer = Consumer(
        executor, lambda: app.broker, worker.queues, worker.prefetch, worker.lease,
        reporter, stop, max_tasks=worker.max_tasks_per_child,
        max_memory_kib=worker.max_memory_per_child, poll=worker.poll_interval,
    )
    signals.worker_process_init.send(sender=None)
    if isinstance(reporter, OwnLeases):
        threading.Thread(target=reporter.renew, args=(app, worker.lease, worker.extend_every,
                                                      stop),
                         name="conveyor-renew", daemon=True).start()
    try:
        consumer.run()
    finally:
        signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)
    conn.close()


def reports_sender(conn: Connection) -> Callable[[list[tuple[Any, ...]]], None]:
    """Send a child's reports with plain ``pickle`` (read by :func:`read_reports`).

    ``Connection.send`` builds a ``ForkingPickler`` (a class with reducers for
    sockets and descriptors, none of which a report holds) per call: ~3.3 µs
    against ~0.8 for ``pickle.dumps`` of a task's reports, once or twice a task."""
    send_bytes, dumps, protocol = conn.send_bytes, pickle.dumps, pickle.HIGHEST_PROTOCOL
    return lambda reports: send_bytes(dumps(reports, protocol))


def read_reports(conn: Connection) -> list[tuple[Any, ...]]:
    reports: list[tuple[Any, ...]] = pickle.loads(conn.recv_bytes())
    return reports


def start_frozen(process: BaseProcess) -> None:
    """Fork ``process`` with every object of the supervisor frozen (``gc.freeze``).

    The child's collector then leaves the objects it was forked with alone:
    walking them writes to their headers, which copies each page the child
    shares with the supervisor (about 0.4 MiB of a child's own memory after
    2,000 tasks, docs/performance.md, round two, fourth pass).  What they
    hold was made before the fork and mostly lives as long as the child; a
    cycle among them that the child drops stays unreclaimed, bounded by what
    the supervisor held.  The supervisor unfreezes at once: its own
    collections go on as before.
    """
    gc.freeze()
    try:
        process.start()
    finally:
        gc.unfreeze()


class OwnLeases(SlotReporter):
    """A child's reporter when its broker's deliveries follow the connection:
    the child acknowledges its own messages and renews what it holds."""

    acks = False  # the consumer acknowledges each message itself
    writes = False  # so each run writes its own result, before its ack

    def __init__(self, send: Callable[[list[tuple[Any, ...]]], None],
                 board: Board | None = None) -> None:
        super().__init__(send, board)
        self._mine: dict[str, Delivery] = {}
        self._lock = threading.Lock()

    def held(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            self._mine.update((d.id, d) for d in deliveries)
        super().held(deliveries)

    def done(self, delivery: Delivery, outcome: Outcome) -> None:
        """Report a finished task.  Its result is written here (never by the
        supervisor); one the consumer still holds (``outcome.write``, ADR 0038)
        stays renewed until :meth:`written`."""
        # SOON: the consumer's ack_soon may still hold this ack back when the child
        # dies; the supervisor then marks it settled (ADR 0035).  HELD: the result is
        # not written yet, and goes along, for the supervisor to write and settle if
        # the child dies first (ADR 0038); its "written" report says when it was.
        flag: str | bool
        write: tuple[Any, ...] | None
        if outcome.write is not None:
            flag, write = HELD, as_report(outcome.write)
        else:
            with self._lock:
                self._mine.pop(delivery.id, None)
            flag, write = (SOON if outcome.action == ACK else False), None
        report = self.clock.finish(delivery, outcome)
        self._pending.append(("done", delivery.id, outcome.state, flag,
                              report and report.to_tuple(), write, None))

    def written(self, delivery: Delivery, acked: bool) -> None:
        """A held result was written and its message acknowledged with ``ack_soon``
        (``acked``), or handed back: stop renewing it."""
        with self._lock:
            self._mine.pop(delivery.id, None)
        if acked:
            self._pending.append(("soon", delivery.id))

    def renew(self, app: Any, lease: float, every: float, stop: threading.Event) -> None:
        """Renew what this child holds every ``every`` s until it stops."""
        while not stop.wait(every):
            with self._lock:
                held = list(self._mine.values())
            try:
                kept = app.broker.extend(held, lease)
            except BrokerError as exc:
                log.warning("could not renew %d leases: %s", len(held), exc)
                continue
            lost = [d.id for d, ok in zip(held, kept, strict=True) if not ok]
            if lost:
                log.warning("leases lost for %s (held past their lease?)", ", ".join(lost[:5]))


class _Child(NamedTuple):
    process: BaseProcess
    conn: Connection
    board: Board


class PreforkPool(Supervisor):
    """Forks the children the supervisor asks for and reads their pipes."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.children: dict[int, _Child] = {}
        self.watch = ChildWatch()
        # Per child: the last board sequence number its pipe said it covers, and the
        # last one applied from the board.  A board at or below the first is stale
        # (the pipe told more since); the lock makes "check, then apply" one step
        # against the pipe's "covers" (the control thread reads boards too).
        self._covered: dict[int, int] = {}
        self._seen: dict[int, int] = {}
        self._boards = threading.Lock()

    # -- the slots ---------------------------------------------------------
    def start_slot(self, key: int) -> None:
        signals.worker_before_create_process.send(sender=self)
        trim()  # the child starts with the supervisor's resident pages
        reader, writer = _CTX.Pipe(duplex=False)
        board = Board()
        process = _CTX.Process(target=child_main,
                               args=(self.worker, writer, key, os.getpid(), board),
                               name=f"conveyor-child-{key}", daemon=False)
        start_frozen(process)
        writer.close()
        self.children[key] = _Child(process, reader, board)
        self.watch.add(key, reader.fileno(), process.sentinel)
        log.debug("started child %d (pid %s)", key, process.pid)

    def stop_slot(self, key: int, now: bool = False, in_task: bool = False) -> None:
        child = self.children.get(key)
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid or 0, signal.SIGKILL if now else signal.SIGTERM)

    def describe(self, key: int) -> str:
        child = self.children.get(key)
        return f"child pid {child.process.pid if child else '?'}"

    def _renewable(self) -> list[Delivery]:
        """Where deliveries follow the connection (RabbitMQ) each child renews its own
        leases; the supervisor holds the side-store lease of each running task in
        its child's name (``AMQPBroker.extend``), which a child holding the GIL
        past its connection's heartbeat keeps its task by.  Prefetched messages
        are not held for it: RabbitMQ hands them to another consumer."""
        if not self.app.broker.leases_follow_connection:
            return super()._renewable()
        return [running.delivery for _, running in self.book.running_tasks()
                if not running.acked]

    # Children are forked with the worker's queues and task limits: remote control
    # changes reach them by replacing them, each after its task (before the reply).
    refresh = Supervisor.recycle

    # -- reports and exits -------------------------------------------------
    def wait(self, timeout: float) -> list[tuple[int, int | None]]:
        reports, exits = self.watch.wait(timeout)
        self.drain(reports)
        return [(key, self._reap(key)) for key in exits]

    def apply(self, key: int, reports: list[tuple[Any, ...]]) -> None:
        if reports and reports[0][0] == "covers":
            with self._boards:
                self._covered[key] = reports[0][1]
        super().apply(key, reports)

    def drain(self, keys: Iterable[int] | None = None) -> None:
        """Take the children's reports; all of them (``keys`` None): their boards
        first, then their pipes, which carry anything that overtook a board."""
        if keys is None:
            self.observe()
        for key in list(self.children) if keys is None else keys:
            child = self.children.get(key)
            with contextlib.suppress(EOFError, OSError):  # gone: its sentinel says so
                while child is not None and self.watch.readable(key):
                    self.apply(key, read_reports(child.conn))

    def observe(self) -> None:
        """Apply what the children posted on their boards since their pipes last said
        (any thread: the control thread calls it for ``inspect``)."""
        for key, child in list(self.children.items()):
            self._read_board(key, child.board)

    def _read_board(self, key: int, board: Board) -> None:
        with self._boards:
            if key not in self.children:
                return  # reaped (its board closed) meanwhile
            covered, seen = self._covered.get(key, 0), self._seen.get(key, 0)
            if board.seq() <= max(covered, seen):
                return  # nothing new (the cheap case: one header read)
            for _ in range(3):  # a read racing the child's write is torn: try again
                posted = board.read()
                if posted is not None:
                    break
            else:
                return  # still being written, or cut short by the child's death
            seq, reports = posted
            if seq <= max(covered, seen):
                return
            self._seen[key] = seq
            super().apply(key, reports)

    def _reap(self, key: int) -> int | None:
        """Read what the child said before dying, so 'done' is not mistaken for lost:
        its board (what it held and ran), then its pipe (what came after)."""
        child = self.children[key]
        self._read_board(key, child.board)
        with contextlib.suppress(EOFError, OSError):
            while child.conn.poll():
                self.apply(key, read_reports(child.conn))
        child.conn.close()
        with self._boards:
            del self.children[key]
            self._covered.pop(key, None)
            self._seen.pop(key, None)
            child.board.close()
        self.watch.remove(key)
        child.process.join(1)
        return child.process.exitcode
