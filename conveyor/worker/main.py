"""The worker: options, signals, and the chosen pool.

``Worker(app, ...).run()`` blocks until shut down.  SIGTERM or SIGINT starts a
warm shutdown (stop fetching, let running tasks finish within
``worker_shutdown_timeout``, hand back what was fetched but not started); a
second one, or SIGQUIT, is a cold shutdown (kill now, hand everything back).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

from conveyor import _redact as redact
from conveyor import signals
from conveyor._events import EventSink
from conveyor._greenlets import GREENLET_POOLS, check_pool
from conveyor._signing import pickle_warning
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.queues import check_declared, queue_names
from conveyor.task import warn_no_effect_options
from conveyor.worker.startup import wait_for_broker, warn_if_calls_outlast_leases
from conveyor.worker.trim import trim

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.worker.autoscale import Autoscaler
    from conveyor.worker.book import LeaseBook, Running
    from conveyor.worker.ratelimit import RateLimits

log = logging.getLogger("conveyor.worker")
POOLS = ("prefork", "threads", "async", "solo", "gevent", "eventlet")
MEMORY_EVERY = 10.0  # seconds between measurements of the worker's memory for heartbeats


def expand_hostname(template: str | None, app_name: str) -> str:
    """Celery's ``-n`` templates: ``%h`` host, ``%n`` short host, ``%d`` domain."""
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    if not template:
        return f"{app_name}@{host}"
    return template.replace("%h", host).replace("%n", short).replace("%d", domain)


class Worker:
    """A worker serving ``queues`` with ``concurrency`` slots of ``pool``."""

    def __init__(self, app: Conveyor, queues: Sequence[str] | None = None,
                 concurrency: int | None = None, pool: str | None = None,
                 hostname: str | None = None, prefetch_multiplier: int | None = None,
                 max_tasks_per_child: int | None = None,
                 max_memory_per_child: int | None = None,
                 events: EventSink | None = None,
                 autoscale: tuple[int, int] | None = None) -> None:
        conf = app.conf
        self.app = app
        self.hostname = expand_hostname(hostname, app.main.split(".")[0])
        # Celery's celeryd_init: before the worker reads its settings, so a
        # receiver can adjust them per node.
        signals.celeryd_init.send(sender=self.hostname, instance=self, conf=conf, options={
            "queues": queues, "concurrency": concurrency, "pool": pool, "hostname": hostname,
            "prefetch_multiplier": prefetch_multiplier, "max_tasks_per_child": max_tasks_per_child,
            "max_memory_per_child": max_memory_per_child})
        self.queues = list(queues or queue_names(conf.task_queues) or [conf.task_default_queue])
        if not conf.task_create_missing_queues:  # Celery refuses -Q of an undeclared queue
            for name in self.queues:
                check_declared(name, conf.task_queues, conf.task_default_queue)
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.pool_name = pool or conf.worker_pool
        if self.pool_name not in POOLS:
            raise ConfigurationError(f"--pool must be one of {', '.join(POOLS)}, "
                                     f"got {self.pool_name!r}")
        if self.pool_name in GREENLET_POOLS:
            check_pool(self.pool_name)  # eventlet, or an unpatched process: refused
        self.solo = self.pool_name == "solo"
        if self.solo:
            self.pool_name, self.concurrency = "threads", 1
        self.autoscaler = self._autoscaler(autoscale)
        self.prefetch = max(1, prefetch_multiplier or conf.worker_prefetch_multiplier)
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.lease = conf.broker_lease_timeout
        self.extend_every = max(0.2, min(self.lease / 3, 10.0))
        self.heartbeat_interval = conf.worker_heartbeat_interval
        self.shutdown_timeout = conf.worker_shutdown_timeout
        self.events: EventSink = events or app.events
        # Called (without blocking) when shutdown starts, e.g. to stop an embedded beat.
        self.on_stop: list[Callable[[], None]] = []
        # How long an idle consumer blocks in reserve(); bounds warm-shutdown latency.
        self.poll_interval = 1.0
        self.stopping = False
        self.cold = False
        self.shutdown_deadline = float("inf")
        self.started_at = time.time()
        self._pool: Any = None
        self.rate_limits: RateLimits | None = None  # set when run() has the final task list
        self._ready = threading.Event()
        self._memory: tuple[float, int | None] = (-MEMORY_EVERY, None)  # (measured at, KiB)
        signals.worker_init.send(sender=self)

    @property
    def id(self) -> str:
        return f"{self.hostname}:{os.getpid()}"

    def _autoscaler(self, bounds: tuple[int, int] | None) -> Autoscaler | None:
        """``--autoscale MAX,MIN``: the pool starts at MIN slots (as Celery's)."""
        if bounds is None:
            return None
        if self.solo:
            raise ConfigurationError("--autoscale needs a pool of several slots, not solo")
        from conveyor.worker.autoscale import Autoscaler

        scaler = Autoscaler(*bounds)
        self.concurrency = scaler.minimum
        return scaler

    def _make_pool(self) -> Any:
        if self.pool_name == "prefork":
            from conveyor.worker.prefork import PreforkPool

            return PreforkPool(self)
        if self.pool_name == "gevent":
            from conveyor.worker.greenlets import GeventPool

            return GeventPool(self)
        from conveyor.worker.threads import AsyncPool, ThreadPool

        return AsyncPool(self) if self.pool_name == "async" else ThreadPool(self)

    # -- running -----------------------------------------------------------
    def run(self, install_signals: bool = True) -> None:
        """Serve until shut down (blocks)."""
        self.app.finalize()
        self.app.conf.warn_no_effect()  # one warning naming every no-effect setting that was set
        warn_no_effect_options(set(self.app.tasks.values()))  # and every AMQP-only task option
        from conveyor.worker.ratelimit import RateLimits

        # Before the pool forks: its children share the per-worker slots.
        self.rate_limits = RateLimits.for_app(self.app)
        if install_signals:
            self._install_signals()
        address = redact.url(self.app.conf.broker_url)
        if not wait_for_broker(self.app, lambda: self.stopping, address, time.sleep):
            return
        warn_if_calls_outlast_leases(self.app, self.lease)
        self._pool = self._make_pool()
        from conveyor.control.worker import ControlThread

        control = ControlThread.start_for(self)  # answers even when every slot is busy
        signals.celeryd_after_setup.send(sender=self.hostname, instance=self, conf=self.app.conf)
        log.info("worker %s ready: pool=%s concurrency=%d queues=%s broker=%s",
                 self.hostname, self.pool_name, self.concurrency, ",".join(self.queues),
                 redact.url(self.app.conf.broker_url))
        self._log_tasks()
        risk = pickle_warning(self.app.conf)
        if risk:
            log.warning("%s", risk)
        self._ready.set()
        signals.worker_ready.send(sender=self)
        try:
            self._run_pool()
        finally:
            if control is not None:
                control.stop()
            self._goodbye()
            signals.worker_shutdown.send(sender=self)
            log.info("worker %s stopped", self.hostname)

    def _run_pool(self) -> None:
        if not self.solo:
            self._pool.run()
            return
        # Celery's solo pool runs tasks in the worker process: that process is the "child".
        signals.worker_process_init.send(sender=None)
        try:
            self._pool.run()
        finally:
            signals.worker_process_shutdown.send(sender=None, pid=os.getpid(), exitcode=0)

    def _log_tasks(self) -> None:
        """The registered tasks, one a line, as Celery's start-up banner lists them."""
        names = sorted(name for name in self.app.tasks if not name.startswith("conveyor."))
        log.info("worker %s knows %d task(s):%s", self.hostname, len(names),
                 "".join(f"\n  . {name}" for name in names))

    def wait_ready(self, timeout: float = 10.0) -> bool:
        return self._ready.wait(timeout)

    def request_stop(self, cold: bool = False) -> None:
        """Warm shutdown, or cold when asked (or on the second request)."""
        if self.stopping or cold:
            self.cold = True
        if not self.stopping:
            for hook in self.on_stop:
                hook()
            self.stopping = True
            self.shutdown_deadline = time.monotonic() + self.shutdown_timeout
            if self._pool is not None:
                self._pool.begin_shutdown()
        log.info("%s shutdown requested", "cold" if self.cold else "warm")

    def _install_signals(self) -> None:
        def warm(signum: int, frame: FrameType | None) -> None:
            signals.worker_shutting_down.send(sender=self.hostname, how="Warm", exitcode=0,
                                              sig=signal.Signals(signum).name)
            self.request_stop()

        def cold(signum: int, frame: FrameType | None) -> None:
            signals.worker_shutting_down.send(sender=self.hostname, how="Cold", exitcode=1,
                                              sig=signal.Signals(signum).name)
            self.request_stop(cold=True)

        signal.signal(signal.SIGTERM, warm)
        signal.signal(signal.SIGINT, warm)
        signal.signal(signal.SIGQUIT, cold)

    # -- heartbeat ---------------------------------------------------------
    def heartbeat(self, book: LeaseBook, slots: int) -> None:
        """Publish this worker's state (called by the pool's supervisor loop)."""
        signals.heartbeat_sent.send(sender=self)
        running = book.running_tasks()
        info = {
            "id": self.id,
            "hostname": self.hostname,
            "pid": os.getpid(),
            "queues": self.queues,
            "pool": self.pool_name,
            "concurrency": self.concurrency,
            "slots": slots,
            "active": [_active(r) for _, r in running],
            "counts": dict(book.counts),
            "processed": sum(book.counts.values()),
            "failed": book.counts.get("FAILURE", 0),
            "memory_kib": self._memory_kib(),
            "started_at": self.started_at,
            "heartbeat_at": time.time(),
        }
        try:
            self.events.worker_heartbeat(info, ttl=self.heartbeat_interval * 5)
            self._flush(book)
            self.events.sample_queues(self.app.broker)
        except Exception as exc:  # heartbeats must never stop the worker
            log.warning("heartbeat failed: %s", exc)

    def _memory_kib(self) -> int | None:
        """The tree's resident memory, measured at most every :data:`MEMORY_EVERY`
        seconds: psutil scans every process on the host (~2 ms) to find children."""
        now = time.monotonic()
        if now - self._memory[0] >= MEMORY_EVERY:
            self._memory = (now, _memory_kib())
        return self._memory[1]

    def flush_events(self, book: LeaseBook) -> None:
        """Write the task events now, between heartbeats (many were recorded)."""
        try:
            self._flush(book)
        except Exception as exc:  # like a heartbeat's: never stops the worker
            log.warning("could not write task events: %s", exc)

    def _flush(self, book: LeaseBook) -> None:
        """Write the task events recorded since the last heartbeat (kept on failure)."""
        batch = book.recorder.drain(self.id)
        if not batch:
            return
        try:
            self.events.write(batch)
        except BrokerError:  # the store is away: the next heartbeat carries the batch
            book.recorder.restore(batch)
            raise
        except Exception:  # the store refused the data: carrying it on would fail forever
            log.exception("dropped %d task events the event store refused", len(batch.tasks))
        del batch
        trim()  # the batch and its packed commands: this process's largest allocations

    def _goodbye(self) -> None:
        book = getattr(self._pool, "book", None)
        try:
            if book is not None:
                self._flush(book)
            self.events.worker_offline(self.id)
        except Exception as exc:
            log.warning("could not record the worker going offline: %s", exc)


def _active(running: Running) -> dict[str, Any]:
    elapsed = time.monotonic() - running.started
    return {"id": running.delivery.id.split("~", 1)[0], "task": running.task,
            "queue": running.delivery.queue, "started_at": time.time() - elapsed}


def _memory_kib() -> int | None:
    """Resident memory of the worker and its children (prefork), in KiB.

    Read from ``/proc`` where there is one: psutil would answer the same, but
    importing it costs the supervisor about 0.9 MiB of its resident memory
    (and a child forked after it, its copy), for one sum every ten seconds
    (docs/performance.md, round two, fourth pass: worker memory).  Elsewhere,
    psutil.
    """
    try:
        return _proc_tree_kib(os.getpid())
    except OSError:  # no /proc (macOS, BSD)
        pass
    try:
        import psutil

        me = psutil.Process()
        procs = [me, *me.children(recursive=True)]
        return sum(int(p.memory_info().rss) for p in procs) // 1024
    except Exception:  # a child exiting mid-count, or no psutil
        return None


def _proc_tree_kib(root: int) -> int:
    """The resident memory of ``root`` and every descendant, from ``/proc``.

    As psutil finds children: every process's parent from ``/proc/<pid>/stat``
    (the field after the parenthesised name, which may itself hold spaces or
    parentheses).  A process that exits while this reads is left out.
    """
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                parent = int(f.read().rpartition(b")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(name))
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo, seen = 0, [root], {root}
    while todo:
        pid = todo.pop()
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * page
        except OSError:
            if pid == root:
                raise
        for child in children.get(pid, ()):
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return total // 1024
