"""``app.control``: Celery's remote-control client, on Conveyor's control channel.

Method names, arguments and reply shapes follow Celery's
``celery.app.control`` (``/work/ref/celery/celery/app/control.py``):
``broadcast`` returns a list of ``{node: reply}`` dicts when a reply is
wanted; ``inspect()`` methods return one ``{node: reply}`` dict, or ``None``
when no worker answered.  What differs, and why, is in
``docs/migrating-from-celery.md`` ("Remote control").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.control.base import Command, ControlChannel, channel_for
from conveyor.exceptions import ConfigurationError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

Replies = list[dict[str, Any]]
# Conveyor always ends a terminated task hard (the process is replaced, or the
# thread is interrupted); these names mean that, others would be ignored.
_TERMINATE_SIGNALS = {None, "SIGTERM", "TERM", "SIGKILL", "KILL", 9, 15}


def _destination(destination: str | Sequence[str] | None) -> list[str] | None:
    if destination is None:
        return None
    return [destination] if isinstance(destination, str) else list(destination)


def _refuse(method: str, **unsupported: Any) -> None:
    given = [name for name, value in unsupported.items() if value is not None]
    if given:
        raise ConfigurationError(
            f"{method}(): {', '.join(given)} not supported by Conveyor (commands travel on the "
            "broker's control channel, and workers are matched by exact name)")


class Control:
    """Celery's ``app.control``: broadcast commands to workers, collect replies."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._channel: tuple[int, ControlChannel] | None = None
        self._lock = threading.Lock()

    @property
    def channel(self) -> ControlChannel:
        """This process's control channel (reopened after fork)."""
        with self._lock:
            if self._channel is None or self._channel[0] != os.getpid():
                conf = self.app.conf
                self._channel = (os.getpid(),
                                 channel_for(conf.broker_url, conf.broker_options()))
            return self._channel[1]

    def close(self) -> None:
        """Release this process's control channel (reopened on next use)."""
        with self._lock:
            held, self._channel = self._channel, None
        if held is not None and held[0] == os.getpid():
            held[1].close()

    def inspect(self, destination: str | Sequence[str] | None = None, timeout: float = 1.0,
                callback: Callable[[dict[str, Any]], None] | None = None,
                limit: int | None = None, **options: Any) -> Inspect:
        return Inspect(self, destination=destination, timeout=timeout, callback=callback,
                       limit=limit, **options)

    def broadcast(self, command: str, arguments: dict[str, Any] | None = None,
                  destination: str | Sequence[str] | None = None, connection: Any = None,
                  reply: bool = False, timeout: float = 1.0, limit: int | None = None,
                  callback: Callable[[dict[str, Any]], None] | None = None,
                  channel: Any = None, pattern: str | None = None, matcher: str | None = None,
                  **extra_kwargs: Any) -> Replies | None:
        """Send ``command`` to every worker (or those in ``destination``)."""
        _refuse("broadcast", connection=connection, channel=channel, pattern=pattern,
                matcher=matcher)
        nodes = _destination(destination)
        if nodes is not None and limit is None:
            limit = len(nodes)  # Celery stops waiting once every named worker answered
        sent = Command(command, {**(arguments or {}), **extra_kwargs}, nodes, reply)
        self.channel.publish(sent)
        if not reply:
            return None
        out: Replies = []
        for node, body in self.channel.replies(sent.id, timeout, limit):
            answer = {node: body}
            if callback is not None:
                callback(answer)
            out.append(answer)
        return out

    # -- Celery's command methods --------------------------------------------
    def ping(self, destination: str | Sequence[str] | None = None,
             timeout: float = 1.0, **kwargs: Any) -> Replies:
        return self.broadcast("ping", reply=True, destination=destination, timeout=timeout,
                              **kwargs) or []

    def revoke(self, task_id: str | Sequence[str], destination: str | Sequence[str] | None = None,
               terminate: bool = False, signal: str | int | None = None,
               **kwargs: Any) -> Replies | None:
        """Revoke in the broker (workers started later see it too), and tell running workers."""
        if signal not in _TERMINATE_SIGNALS:
            raise ConfigurationError(
                f"revoke(signal={signal!r}): Conveyor always stops a terminated task hard "
                "(SIGKILL and a new child, or TaskRevokedError in a thread); pass SIGTERM, "
                "SIGKILL or nothing")
        ids = [task_id] if isinstance(task_id, str) else list(task_id)
        self.app.revoke(ids, terminate=terminate)
        return self.broadcast("revoke", destination=destination,
                              arguments={"task_id": ids, "terminate": terminate}, **kwargs)

    def terminate(self, task_id: str | Sequence[str],
                  destination: str | Sequence[str] | None = None,
                  signal: str | int | None = "SIGTERM", **kwargs: Any) -> Replies | None:
        return self.revoke(task_id, destination=destination, terminate=True, signal=signal,
                           **kwargs)

    def rate_limit(self, task_name: str, rate_limit: str | float,
                   destination: str | Sequence[str] | None = None,
                   **kwargs: Any) -> Replies | None:
        return self.broadcast("rate_limit", destination=destination,
                              arguments={"task_name": task_name, "rate_limit": rate_limit},
                              **kwargs)

    def time_limit(self, task_name: str, soft: float | None = None, hard: float | None = None,
                   destination: str | Sequence[str] | None = None,
                   **kwargs: Any) -> Replies | None:
        return self.broadcast("time_limit", destination=destination,
                              arguments={"task_name": task_name, "soft": soft, "hard": hard},
                              **kwargs)

    def add_consumer(self, queue: str, exchange: str | None = None,
                     exchange_type: str = "direct", routing_key: str | None = None,
                     options: dict[str, Any] | None = None,
                     destination: str | Sequence[str] | None = None,
                     **kwargs: Any) -> Replies | None:
        _refuse("add_consumer", exchange=exchange, routing_key=routing_key, options=options)
        return self.broadcast("add_consumer", destination=destination,
                              arguments={"queue": queue}, **kwargs)

    def cancel_consumer(self, queue: str, destination: str | Sequence[str] | None = None,
                        **kwargs: Any) -> Replies | None:
        return self.broadcast("cancel_consumer", destination=destination,
                              arguments={"queue": queue}, **kwargs)

    def pool_grow(self, n: int = 1, destination: str | Sequence[str] | None = None,
                  **kwargs: Any) -> Replies | None:
        return self.broadcast("pool_grow", destination=destination, arguments={"n": n},
                              **kwargs)

    def pool_shrink(self, n: int = 1, destination: str | Sequence[str] | None = None,
                    **kwargs: Any) -> Replies | None:
        return self.broadcast("pool_shrink", destination=destination, arguments={"n": n},
                              **kwargs)

    def autoscale(self, max: int, min: int,
                  destination: str | Sequence[str] | None = None,
                  **kwargs: Any) -> Replies | None:
        return self.broadcast("autoscale", destination=destination,
                              arguments={"max": max, "min": min}, **kwargs)

    def shutdown(self, destination: str | Sequence[str] | None = None,
                 **kwargs: Any) -> Replies | None:
        """Warm shutdown: stop fetching, finish running tasks, exit 0."""
        return self.broadcast("shutdown", destination=destination, **kwargs)

    def purge(self, connection: Any = None) -> int:
        """Drop every waiting message of the app's queues; return how many (no worker asked)."""
        _refuse("purge", connection=connection)
        from conveyor.queues import queue_names

        conf = self.app.conf
        names = queue_names(conf.task_queues) or [conf.task_default_queue]
        return sum(self.app.broker.purge(name) for name in names)

    discard_all = purge


class Inspect:
    """Celery's ``app.control.inspect()``: ask workers, get ``{node: reply}`` or ``None``."""

    def __init__(self, control: Control, destination: str | Sequence[str] | None = None,
                 timeout: float = 1.0, callback: Callable[[dict[str, Any]], None] | None = None,
                 limit: int | None = None, pattern: str | None = None,
                 matcher: str | None = None, connection: Any = None, app: Any = None) -> None:
        _refuse("inspect", pattern=pattern, matcher=matcher, connection=connection)
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.callback = callback
        self.limit = limit

    def _request(self, command: str, **arguments: Any) -> dict[str, Any] | None:
        replies = self.control.broadcast(
            command, arguments=arguments, destination=self.destination, reply=True,
            timeout=self.timeout, limit=self.limit, callback=self.callback) or []
        if not replies:
            return None
        by_node = {node: body for reply in replies for node, body in reply.items()}
        if isinstance(self.destination, str):  # Celery: one named node gets its reply alone
            return by_node.get(self.destination)
        return by_node

    def ping(self, destination: str | Sequence[str] | None = None) -> dict[str, Any] | None:
        if destination is None:
            return self._request("ping")
        return Inspect(self.control, destination, self.timeout, self.callback,
                       self.limit)._request("ping")

    def active(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("active", safe=safe)

    def reserved(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("reserved", safe=safe)

    def scheduled(self, safe: bool | None = None) -> dict[str, Any] | None:
        return self._request("scheduled", safe=safe)

    def query_task(self, *ids: str | Sequence[str]) -> dict[str, Any] | None:
        """Celery's ``query_task(*ids)``: per worker, ``{id: [state, request]}``."""
        flat = [i for item in ids for i in ([item] if isinstance(item, str) else item)]
        return self._request("query_task", ids=flat)

    def registered(self, *taskinfoitems: str) -> dict[str, Any] | None:
        if taskinfoitems:
            raise ConfigurationError(
                f"registered({', '.join(taskinfoitems)}): task attributes are not reported; "
                "call registered() for the names")
        return self._request("registered")

    registered_tasks = registered

    def stats(self) -> dict[str, Any] | None:
        return self._request("stats")

    def revoked(self) -> dict[str, Any] | None:
        return self._request("revoked")

    def active_queues(self) -> dict[str, Any] | None:
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> dict[str, Any] | None:
        return self._request("conf", with_defaults=with_defaults)
