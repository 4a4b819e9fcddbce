"""What a worker does with each remote-control command (Celery's worker/control.py names).

:class:`Panel` runs in the worker's control thread.  Inspection commands
read the pool's ledger (:class:`~conveyor.worker.book.LeaseBook`, kept by
the pool's supervisor), so they answer at once however busy the task slots
are.  Commands that change the worker change its state in place and ask the
pool to apply it: a threads pool's consumers read the queue list and task
limits at each fetch and run; a prefork pool's children are forked with
them, so the pool replaces its children as they finish their current task.

Reply shapes are Celery's: ``{"ok": ...}`` or ``{"error": ...}`` for
commands, plain data for inspection.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from conveyor._message import Message
from conveyor.brokers.base import Delivery
from conveyor.exceptions import ConfigurationError, SerializationError
from conveyor.task import parse_rate_limit

if TYPE_CHECKING:
    from conveyor.worker.main import Worker

log = logging.getLogger("conveyor.worker")
Reply = Any
# Celery's filter_hidden_settings: values of such keys are masked in ``conf`` replies.
_HIDDEN = re.compile(r"API|TOKEN|KEY|SECRET|PASS|SIGNATURE|DATABASE", re.IGNORECASE)
_MASK = "********"


class Panel:
    """The command handlers of one worker; ``handle`` picks one by name."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self._revoked: list[str] = []  # ids revoked by broadcast, newest last
        self._handlers: dict[str, Callable[..., Reply]] = {
            name: getattr(self, name) for name in COMMANDS}

    def handle(self, name: str, arguments: dict[str, Any]) -> Reply:
        handler = self._handlers.get(name)
        if handler is None:
            log.error("no such control command: %s", name)
            return {"error": f"No such control command: {name}"}
        try:
            return handler(**arguments)
        except TypeError as exc:  # wrong arguments from the sender
            return {"error": f"{name}: {exc}"}
        except Exception as exc:  # a command must never stop the control thread
            log.exception("control command %s failed", name)
            return {"error": f"{name}: {exc!r}"}

    # -- inspection ------------------------------------------------------
    def ping(self, **_: Any) -> Reply:
        return {"ok": "pong"}

    def active(self, safe: bool | None = None, **_: Any) -> Reply:
        pool = self.worker._pool
        if pool is None:
            return []
        pool.observe()  # prefork children post their tasks' starts on a board (ADR 0039)
        return [self._request(r.delivery, key, r.started, acknowledged=False)
                for key, r in pool.book.running_tasks()]

    def reserved(self, safe: bool | None = None, **_: Any) -> Reply:
        pool = self.worker._pool
        if pool is None:
            return []
        pool.observe()
        running = {r.delivery.id for _, r in pool.book.running_tasks()}
        return [self._request(d, None, None, acknowledged=False)
                for d in pool.book.all_held() if d.id not in running]

    def scheduled(self, safe: bool | None = None, **_: Any) -> Reply:
        return []  # ETA tasks wait in the broker, never in a worker (guarantee 3)

    def query_task(self, ids: str | list[str] | None = None, **_: Any) -> Reply:
        """Celery's ``query_task``: ``{id: [state, request]}`` for the ids this worker
        holds, ``state`` being ``active`` (running) or ``reserved`` (prefetched)."""
        wanted = {ids} if isinstance(ids, str) else set(ids or ())
        pool = self.worker._pool
        if pool is None or not wanted:
            return {}
        pool.observe()
        found: dict[str, Any] = {}
        for key, r in pool.book.running_tasks():
            if _task_id(r.delivery) in wanted:
                found[_task_id(r.delivery)] = [
                    "active", self._request(r.delivery, key, r.started, acknowledged=False)]
        for delivery in pool.book.all_held():
            if _task_id(delivery) in wanted and _task_id(delivery) not in found:
                found[_task_id(delivery)] = ["reserved",
                                             self._request(delivery, None, None, False)]
        return found

    def registered(self, *taskinfoitems: str, **_: Any) -> Reply:
        return sorted(n for n in self.worker.app.tasks if not n.startswith("conveyor."))

    def revoked(self, **_: Any) -> Reply:
        return list(self._revoked)

    def active_queues(self, **_: Any) -> Reply:
        """Celery's reply, each queue as this worker's broker declares it."""
        broker = self.worker.app.broker
        return [_queue_info(name, broker.queue_arguments(name)) for name in self.worker.queues]

    def stats(self, **_: Any) -> Reply:
        worker, pool = self.worker, self.worker._pool
        book = getattr(pool, "book", None)
        return {
            "pid": os.getpid(),
            "uptime": int(time.time() - worker.started_at),
            "clock": "0",
            "prefetch_count": worker.prefetch * worker.concurrency,
            "pool": {"implementation": worker.pool_name, "max-concurrency": worker.concurrency,
                     "processes": _pids(pool), "timeouts": [0, 0]},
            "total": dict(getattr(book, "task_counts", {})),
            "broker": {"transport": worker.app.conf.broker_url.split("://", 1)[0]},
            "rusage": _rusage(),
        }

    def conf(self, with_defaults: bool = False, **_: Any) -> Reply:
        conf = self.worker.app.conf
        names = conf.names() if with_defaults else sorted(getattr(conf, "_set", ()))
        return {name: _hidden(name, getattr(conf, name)) for name in names
                if hasattr(conf, name)}

    # -- changes ---------------------------------------------------------
    def enable_events(self, **_: Any) -> Reply:
        """Task events are always recorded here (the monitor's history reads them)."""
        return {"ok": "task events already enabled"}

    def disable_events(self, **_: Any) -> Reply:
        return {"error": "task events cannot be disabled on a Conveyor worker: the "
                         "monitor's history and `conveyor events` are written from them"}

    def revoke(self, task_id: str | list[str], terminate: bool = False,
               signal: str | None = None, **_: Any) -> Reply:
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self._revoked = (self._revoked + ids)[-50_000:]  # Celery keeps 50,000 too
        return {"ok": f"tasks {', '.join(ids)} flagged as revoked"}

    def rate_limit(self, task_name: str, rate_limit: str | float | None, **_: Any) -> Reply:
        """Celery's ``rate_limit`` command: change one task's per-worker limit now."""
        task = self.worker.app.tasks.get(task_name)
        if task is None:
            log.error("rate limit attempt for unknown task %s", task_name)
            return {"error": f"unknown task {task_name!r}"}
        try:
            rate = parse_rate_limit(rate_limit)
        except ConfigurationError as exc:
            return {"error": f"invalid rate limit string: {exc}"}
        limits = self.worker.rate_limits
        if self.worker.app.conf.worker_disable_rate_limits or limits is None:
            return {"error": "rate limits are disabled on this worker "
                             "(worker_disable_rate_limits); nothing was changed"}
        task.options = dataclasses.replace(task.options, rate_limit=rate_limit or None)
        limits.slots.set_interval(task_name, 1.0 / rate if rate else None)
        if not rate:
            log.info("rate limits disabled for tasks of type %s", task_name)
            return {"ok": "rate limit disabled successfully"}
        log.info("new rate limit for tasks of type %s: %s", task_name, rate_limit)
        return {"ok": "new rate limit set successfully"}

    def time_limit(self, task_name: str, soft: float | None = None,
                   hard: float | None = None, **_: Any) -> Reply:
        task = self.worker.app.tasks.get(task_name)
        if task is None:
            return {"error": f"unknown task {task_name!r}"}
        task.options = dataclasses.replace(task.options, soft_time_limit=soft, time_limit=hard)
        log.info("new time limits for %s: soft=%s hard=%s", task_name, soft, hard)
        self._refresh()
        return {"ok": "time limits set successfully"}

    def add_consumer(self, queue: str, **_: Any) -> Reply:
        if queue in self.worker.queues:
            return {"ok": f"already consuming from {queue!r}"}
        self.worker.queues.append(queue)
        log.info("started consuming from %s", queue)
        self._refresh()
        return {"ok": f"add consumer {queue}"}

    def cancel_consumer(self, queue: str, **_: Any) -> Reply:
        if queue in self.worker.queues:
            self.worker.queues.remove(queue)
            log.info("stopped consuming from %s", queue)
            self._refresh()
        return {"ok": f"no longer consuming from {queue}"}

    def pool_grow(self, n: int = 1, **_: Any) -> Reply:
        self._resize(self.worker.concurrency + int(n))
        return {"ok": "pool will grow"}

    def pool_shrink(self, n: int = 1, **_: Any) -> Reply:
        size = self.worker.concurrency - int(n)
        if size < 1:
            return {"error": f"cannot shrink the pool below 1 slot (it has "
                             f"{self.worker.concurrency})"}
        self._resize(size)
        return {"ok": "pool will shrink"}

    def autoscale(self, max: int, min: int, **_: Any) -> Reply:
        """Celery's ``autoscale``: new bounds for a worker started with --autoscale."""
        scaler = self.worker.autoscaler
        if scaler is None:
            return {"error": "Autoscale not enabled"}
        try:
            scaler.update(int(max), int(min))
        except (ConfigurationError, ValueError) as exc:
            return {"error": str(exc)}
        return {"ok": f"autoscale now max={scaler.maximum} min={scaler.minimum}"}

    def shutdown(self, msg: str = "Got shutdown from remote", **_: Any) -> Reply:
        log.warning(msg)
        self.worker.request_stop()
        return {"ok": "shutdown"}

    # -- helpers -----------------------------------------------------------
    def _refresh(self) -> None:
        refresh = getattr(self.worker._pool, "refresh", None)
        if refresh is not None:
            refresh()

    def _resize(self, size: int) -> None:
        if self.worker.solo:
            raise ValueError("the solo pool has one slot and cannot be resized")
        self.worker._pool.resize(size)

    def _request(self, delivery: Delivery, key: int | None, started: float | None,
                 acknowledged: bool) -> dict[str, Any]:
        info: dict[str, Any] = {"id": _task_id(delivery), "hostname":
                                self.worker.hostname, "acknowledged": acknowledged,
                                "delivery_info": {"routing_key": delivery.queue,
                                                  "priority": delivery.priority,
                                                  "redelivered": delivery.deliveries > 1},
                                "worker_pid": _slot_pid(self.worker._pool, key)}
        try:
            message = Message.decode(delivery.body, self.worker.app.conf.accept_content)
        except SerializationError:
            return {**info, "name": None, "type": None, "args": [], "kwargs": {}}
        args, kwargs = self.worker.app.shown_arguments(message.task, message.args,
                                                       message.kwargs, message.headers)
        info.update(name=message.task, type=message.task, args=args, kwargs=kwargs)
        if started is not None:
            info["time_start"] = time.time() - (time.monotonic() - started)
        return info


# Celery's command names, each a Panel method.
COMMANDS = ("ping", "active", "reserved", "scheduled", "query_task", "registered", "revoked",
            "active_queues", "stats", "conf", "enable_events", "disable_events", "revoke",
            "rate_limit", "time_limit", "autoscale", "add_consumer", "cancel_consumer",
            "pool_grow", "pool_shrink", "shutdown")


def _task_id(delivery: Delivery) -> str:
    """The task id a delivery carries (a redelivered copy's id has a ``~`` suffix)."""
    return delivery.id.split("~", 1)[0]


# kombu's Exchange.as_dict() of the exchange every queue is reached through: the
# default one (RabbitMQ's "", which routes by queue name, as every broker here
# does), durable, never declared, every message sent persistent (delivery mode 2).
_DEFAULT_EXCHANGE = {"name": "", "type": "direct", "arguments": None, "durable": True,
                     "passive": False, "auto_delete": False, "delivery_mode": 2,
                     "no_declare": False}


def _queue_info(name: str, arguments: dict[str, Any] | None) -> dict[str, Any]:
    """Celery's active_queues entry (kombu's ``Queue.as_dict(recurse=True)``, every
    key of ``Queue.attrs``) for a queue declared with ``arguments``
    (``Broker.queue_arguments``).

    ``queue_arguments`` are those arguments and ``max_priority`` their
    ``x-max-priority``: on RabbitMQ the queue's type, its dead letters and, on a
    classic queue with a maximum (its own in ``task_queues``, else
    ``task_queue_max_priority``), that maximum; None on the other brokers, whose
    queues all order by the app's priority steps and have no maximum to report.
    The constant keys are true of every queue here, whatever ``task_queues``
    says (the startup warning names what has no effect): reached by its name
    through the default exchange (the ``exchange=""`` of ``before_task_publish``),
    durable, shared, declared by Conveyor, every delivery acknowledged, no
    expiry, TTL or length limit.  ``bindings`` are routes a message is sent by:
    none, RabbitMQ's delay ladder (docs/decisions/0016-rabbitmq-broker.md) being
    Conveyor's own way back into the queue."""
    return {"name": name, "exchange": dict(_DEFAULT_EXCHANGE), "routing_key": name,
            "queue_arguments": arguments, "binding_arguments": None,
            "consumer_arguments": None, "durable": True, "exclusive": False,
            "auto_delete": False, "no_ack": False, "alias": None, "bindings": [],
            "no_declare": False, "expires": None, "message_ttl": None, "max_length": None,
            "max_length_bytes": None, "max_priority": (arguments or {}).get("x-max-priority")}


def _pids(pool: Any) -> list[int]:
    children = getattr(pool, "children", None)
    if children is None:
        return [os.getpid()]
    return [c.process.pid for c in list(children.values()) if c.process.pid]


def _slot_pid(pool: Any, key: int | None) -> int:
    children = getattr(pool, "children", None)
    if key is None or children is None:
        return os.getpid()
    child = children.get(key)
    return int(child.process.pid) if child is not None and child.process.pid else os.getpid()


def _rusage() -> dict[str, float]:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"utime": usage.ru_utime, "stime": usage.ru_stime, "maxrss": usage.ru_maxrss}


def _hidden(name: str, value: Any) -> Any:
    """Mask what may hold a secret: values of secret-looking keys, passwords in URLs."""
    if _HIDDEN.search(name):
        return _MASK if value else value
    if isinstance(value, dict):
        return {str(k): _hidden(str(k), v) for k, v in value.items()}
    if isinstance(value, str) and "://" in value and "@" in value:
        scheme, rest = value.split("://", 1)
        return f"{scheme}://{_MASK}@{rest.rsplit('@', 1)[1]}"
    if isinstance(value, (str, int, float, bool, type(None), list, dict)):
        return value
    return repr(value)
