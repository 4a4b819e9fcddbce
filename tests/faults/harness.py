"""Fault-injection plumbing: real worker processes, a private Redis, the total-queue check.

Every fault test follows one shape: enqueue tasks that write ``start``/``end``
lines to a ledger (``tests/faults/fault_app.py``), inject a fault, drain, then
run :func:`total_queue` and :func:`assert_nothing_lost`:

* every enqueue the broker acknowledged (its id came back) either completed
  (an ``end`` line) or sits in the dead-letter queue, with a reason;
* nothing is left ready, delayed or leased;
* a task completed twice only where the guarantee allows it (its worker was
  killed or paused while holding it), and the test says which ones may.

The figures of each case (tasks, faults, lost, duplicates, recovery time) are
collected in :data:`FIGURES` and printed at the end of the run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis

from conveyor import Conveyor
from conveyor.brokers.base import Broker

from ..integration.processes import ROOT, Ledger, wait_for, worker_env
from ..tls import RedisTls

APP = "tests.faults.fault_app"
LEASE = 2.0  # seconds; every worker the fault tests start uses it


def task(name: str) -> str:
    """The registered name of a task in the fault app."""
    return f"{APP}.{name}"


# -- figures -------------------------------------------------------------------
@dataclass
class Figures:
    """What one case did and found, for the closing report."""

    case: str
    backend: str
    tasks: int
    faults: int
    lost: int
    duplicates: int
    recovery: float | None = None
    note: str = ""

    def line(self) -> str:
        recovery = "-" if self.recovery is None else f"{self.recovery:.2f}s"
        return (f"{self.case:<42} {self.backend:<8} tasks={self.tasks:<5} "
                f"faults={self.faults:<4} lost={self.lost:<3} dup={self.duplicates:<3} "
                f"recovery={recovery:<7} {self.note}")


FIGURES: list[Figures] = []


def report(figures: Figures) -> Figures:
    FIGURES.append(figures)
    print(figures.line())
    return figures


# -- worker processes ----------------------------------------------------------
class Workers:
    """Starts ``conveyor worker`` processes for one test and kills what is left."""

    def __init__(self, url: str, ledger: Ledger, log_dir: Path, app: str = APP,
                 results: str | None = None) -> None:
        self.url = url
        self.results = results  # result_backend; None keeps results beside the broker
        self.ledger = ledger
        self.log_dir = log_dir
        self.app = app
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, prefix: Sequence[str] = (), env: dict[str, str] | None = None,
              **settings: object) -> subprocess.Popen[bytes]:
        """One worker (its own process group); ``prefix`` wraps it (e.g. faketime)."""
        settings.setdefault("broker_lease_timeout", LEASE)
        settings.setdefault("worker_heartbeat_interval", 0.5)
        if self.results is not None:
            settings.setdefault("result_backend", self.results)
        full_env = worker_env(self.url, self.ledger.path, **settings)
        full_env.update(env or {})
        cmd = [*prefix, sys.executable, "-m", "conveyor", "-A", self.app, "worker",
               "-l", "INFO", "-P", "prefork", *args]
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")
                         for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop_all(self) -> None:
        for proc in self.procs:
            kill_group(proc)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    """Signal a process group started with ``start_new_session``; SIGKILL also reaps it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGKILL:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def wait_ready(workers: Workers, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the worker logged that it is ready (its children then start fetching)."""
    wait_for(lambda: "ready: pool=" in workers.logs() or proc.poll() is not None,
             timeout, "the worker to start")
    assert proc.poll() is None, f"the worker exited: {workers.logs()[-3000:]}"


# -- a steady producer ----------------------------------------------------------
@dataclass
class Producer:
    """Sends a task every ``interval`` s, keeping what was accepted and what failed."""

    app: Conveyor
    interval: float = 0.02
    accepted: list[str] = field(default_factory=list)
    accepted_at: list[float] = field(default_factory=list)  # monotonic, when each returned
    errors: list[BaseException] = field(default_factory=list)
    errors_at: list[tuple[float, float]] = field(default_factory=list)  # (began, failed)
    refused_ids: list[str] = field(default_factory=list)  # the ids the failed sends had
    slowest: float = 0.0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            began = time.monotonic()
            task_id = uuid.uuid4().hex
            try:
                self.accepted.append(
                    self.app.send_task(task("sleep"), [0.05], task_id=task_id).id)
                self.accepted_at.append(time.monotonic())
            except Exception as exc:
                self.errors.append(exc)
                self.errors_at.append((began, time.monotonic()))
                self.refused_ids.append(task_id)
            self.slowest = max(self.slowest, time.monotonic() - began)


# -- a Redis of our own --------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` this test owns, on its own port, that it may kill and restart.

    With ``tls`` it listens for TLS only (and replicates over TLS).  ``binary``
    names another server that takes the same arguments (``valkey-server``,
    :mod:`tests.valkey_server`).
    """

    def __init__(self, directory: Path, durable: bool = False,
                 tls: RedisTls | None = None, binary: str = "redis-server") -> None:
        self.directory = directory
        self.port = free_port()
        self.durable = durable
        self.tls = tls
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, *extra: str) -> None:
        """Start (again, after :meth:`kill`) on the same port; ``extra``: more arguments."""
        durability = (["--appendonly", "yes", "--appendfsync", "always"] if self.durable
                      else ["--appendonly", "no"])
        listen = self.tls.server_args(self.port) if self.tls else ["--port", str(self.port)]
        cmd = [self.binary, *listen, "--bind", "127.0.0.1",
               "--save", "", "--dir", str(self.directory), "--protected-mode", "no",
               *durability, *extra]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        wait_for(self.ping, 15, f"{Path(self.binary).name} on port {self.port}")

    def client(self) -> redis.Redis:
        """A client with short timeouts (and the certificate, with TLS)."""
        tls = self.tls.client_kwargs() if self.tls else {}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                           socket_connect_timeout=1, **tls)

    def ping(self) -> bool:
        client = self.client()
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no shutdown save, connections cut mid-command."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    stop = kill  # a session fixture's ``running()`` stops what it started

    def flush(self) -> None:
        client = self.client()
        client.flushall()
        client.close()


# -- the total-queue property --------------------------------------------------
@dataclass
class TotalQueue:
    """Where every acknowledged enqueue ended up."""

    accepted: list[str]
    completed: Counter[str]
    dead: dict[str, str]
    leftover: dict[str, int]
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        done = sum(1 for i in self.accepted if self.completed[i])
        return (f"{len(self.accepted)} accepted, {done} completed, {len(self.dead)} dead, "
                f"lost={self.lost[:5]}, "
                f"duplicates={dict(list(self.duplicates.items())[:5])}, leftover={self.leftover}")


def dead_letters(broker: Broker, queues: Iterable[str]) -> dict[str, str]:
    """Task id -> reason for every dead letter of ``queues``."""
    out: dict[str, str] = {}
    for queue in queues:
        offset = 0
        while True:
            page = broker.dead_letters(queue, limit=500, offset=offset)
            for letter in page:
                out[letter.id.split("~", 1)[0]] = letter.reason
            if len(page) < 500:
                break
            offset += len(page)
    return out


def total_queue(broker: Broker, ledger: Ledger, accepted: Sequence[str],
                queues: Sequence[str] = ("default",)) -> TotalQueue:
    completed = ledger.count("end")
    dead = dead_letters(broker, queues)
    leftover: Counter[str] = Counter()
    for stats in broker.stats(list(queues)):
        leftover.update(ready=stats.ready, delayed=stats.delayed, inflight=stats.inflight)
    total = TotalQueue(list(accepted), completed, dead, dict(leftover))
    total.lost = [i for i in accepted if completed[i] == 0 and i not in dead]
    total.duplicates = {i: completed[i] - 1 for i in accepted if completed[i] > 1}
    return total


def settled(broker: Broker, ledger: Ledger, accepted: Sequence[str],
            queues: Sequence[str] = ("default",)) -> bool:
    """True once every accepted id completed or is dead and nothing is in flight."""
    total = total_queue(broker, ledger, accepted, queues)
    return not total.lost and not any(total.leftover.values())


def wait_settled_for(broker: Broker, ledger: Ledger, accepted: Sequence[str],
                     hold: float, timeout: float, what: str) -> None:
    """Bounded poll until :func:`settled` has held for ``hold`` seconds in a row.

    For a fault in which a holder's connection went while its task ran on
    RabbitMQ: the copy RabbitMQ hands out again may sit in another worker's
    memory (held back for ``redelivery_wait``), then in the delay ladder (parked
    until its holder's record settles), before it is dropped; while it is in a
    worker's memory no queue count sees it, so one settled look can come before
    the copy shows up as delayed.  A lease covers that whole path."""
    since: list[float] = []  # when the current settled stretch began

    def stayed() -> bool:
        if not settled(broker, ledger, accepted):
            since.clear()
            return False
        since[:] = since or [time.monotonic()]
        return time.monotonic() - since[0] >= hold

    wait_for(stayed, timeout, what)


def assert_nothing_lost(total: TotalQueue, may_repeat: Iterable[str] = ()) -> None:
    """The total-queue property; ``may_repeat``: ids whose holder was killed or paused."""
    assert not total.lost, f"lost: {total.summary()}"
    assert not any(total.leftover.values()), f"left in the broker: {total.summary()}"
    allowed = set(may_repeat)
    unexpected = {i: n for i, n in total.duplicates.items() if i not in allowed}
    assert not unexpected, f"completed twice without a fault allowing it: {unexpected}"


def recover_and_drain(broker: Broker, ledger: Ledger, producer: Producer,
                      thread: threading.Thread, fault_ended: float,
                      more: int = 20) -> tuple[float, list[str], TotalQueue]:
    """After a fault that ended at ``fault_ended`` (monotonic): wait until a task
    completes again (the recovery time) and ``more`` sends are accepted, stop the
    producer, and wait until every accepted task ran.

    Returns the recovery time, the accepted ids and their total queue.
    """
    ended = len(ledger.events("end"))
    wait_for(lambda: len(ledger.events("end")) > ended, 30, "tasks to run again")
    recovery = time.monotonic() - fault_ended
    count = len(producer.accepted)
    wait_for(lambda: len(producer.accepted) >= count + more, 30, "producing to resume")
    producer.stop.set()
    thread.join(10)
    ids = list(producer.accepted)
    wait_for(lambda: settled(broker, ledger, ids), 60, "every accepted task to run")
    return recovery, ids, total_queue(broker, ledger, ids)


def unfinished(ledger: Ledger, settled_ends: int) -> set[str]:
    """Tasks started but not among the first ``settled_ends`` completions.

    A fault may repeat these: they were running, or had just finished and
    their ack may not have been written, when the fault struck.
    """
    done = {task_id for _, task_id, _, _ in ledger.events("end")[:max(0, settled_ends)]}
    return {task_id for _, task_id, _, _ in ledger.events("start")} - done
