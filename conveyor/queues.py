"""Declared queues: ``task_queues`` as Celery accepts it.

``task_queues`` may be a list or tuple of queue names, of :class:`Queue`
objects (this module's, or kombu's: anything with a ``.name``), or Celery's
older dict form ``{"name": {"routing_key": ..., ...}}``.  A worker with no
``-Q`` consumes every declared queue, in the order given; with
``task_create_missing_queues = False`` a task routed to a queue that is not
declared is refused at send with :class:`QueueNotFound` (Celery's rule).

What matters here is the name, and on RabbitMQ's classic queues a queue's
own maximum priority (``max_priority``, or ``queue_arguments["x-max-priority"]``),
which is declared as its ``x-max-priority`` and wins over
``task_queue_max_priority``, as in Celery (ADR 0041).  The other AMQP fields
(exchange, routing key, other queue arguments and declaration options such
as ``durable`` or kombu's ``message_ttl``) shape nothing: SQLite, Redis
and PostgreSQL queues are addressed directly and priorities are always 0..9
(as on Celery's Redis transport), and Conveyor's RabbitMQ broker publishes to
each queue by name and declares its arguments itself.  They are kept on the
object and named in the worker's one startup warning
(:func:`no_effect_reason`), so nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.exceptions import ConfigurationError, QueueNotFound

# Keys of Celery's dict form that are AMQP declarations (no effect here).
_AMQP_KEYS = frozenset({
    "exchange", "exchange_type", "routing_key", "binding_key", "queue_arguments",
    "max_priority", "durable", "auto_delete", "exclusive",
})
# The dict form's keys, and a kombu Queue's attributes (with kombu's defaults), that
# have no field here: kept as names (Queue.other) for the startup warning.
_OTHER_KEYS = ("exchange_type", "durable", "auto_delete", "exclusive")
_KOMBU_DEFAULTS: dict[str, Any] = {
    "durable": True, "exclusive": False, "auto_delete": False, "expires": None,
    "message_ttl": None, "max_length": None, "max_length_bytes": None}


@dataclass(frozen=True)
class Queue:
    """One declared queue (Celery's ``kombu.Queue`` with the fields that matter here).

    ``Queue("reports")``, ``Queue("reports", routing_key="reports")``,
    ``Queue("urgent", queue_arguments={"x-max-priority": 10})``.
    """

    name: str
    exchange: Any = None
    routing_key: str | None = None
    queue_arguments: dict[str, Any] = field(default_factory=dict)
    max_priority: int | None = None
    other: tuple[str, ...] = ()  # other declaration options given, by name (none used)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"Queue needs a non-empty name, got {self.name!r}")

    @property
    def own_max_priority(self) -> int | None:
        """The queue's own ``x-max-priority``: ``max_priority``, else the one in
        ``queue_arguments`` (kombu's ``to_rabbitmq_queue_arguments`` merges
        ``max_priority`` over ``queue_arguments``)."""
        if self.max_priority is not None:
            return self.max_priority
        return self.queue_arguments.get("x-max-priority")

    @property
    def amqp_fields(self) -> list[str]:
        """The AMQP-only fields this queue sets (no effect on SQLite or Redis)."""
        found = [key for key in ("exchange", "routing_key") if getattr(self, key)]
        found += [f"queue_arguments[{key!r}]" for key in self.queue_arguments]
        if self.max_priority is not None:
            found.append("max_priority")
        return found + list(self.other)


def parse_queues(value: Any, source: str = "task_queues") -> list[Queue] | None:
    """``task_queues`` in any of Celery's forms as a list of :class:`Queue`."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        queues = [_from_mapping(name, spec, source) for name, spec in value.items()]
    elif isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{source} must be a list of queue names or Queue objects, got {value!r}")
    else:
        queues = [as_queue(item, source) for item in value]
    return queues


def as_queue(item: Any, source: str = "task_queues") -> Queue:
    """A name, a :class:`Queue`, or a kombu-like object with ``.name``, as a Queue."""
    if isinstance(item, Queue):
        return item
    if isinstance(item, str):
        return Queue(item)
    name = getattr(item, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"{source}: {item!r} is neither a queue name nor a Queue with a name")
    exchange = getattr(item, "exchange", None)
    return Queue(
        name,
        exchange=getattr(exchange, "name", exchange) or None,
        routing_key=getattr(item, "routing_key", None) or None,
        queue_arguments=dict(getattr(item, "queue_arguments", None) or {}),
        max_priority=getattr(item, "max_priority", None),
        other=tuple(key for key, default in _KOMBU_DEFAULTS.items()
                    if getattr(item, key, default) != default),
    )


def _from_mapping(name: Any, spec: Any, source: str) -> Queue:
    if isinstance(spec, Queue) or hasattr(spec, "name"):
        return as_queue(spec, source)
    spec = dict(spec or {})
    unknown = sorted(set(spec) - _AMQP_KEYS)
    if unknown:
        raise ConfigurationError(f"{source}[{name!r}]: unknown queue option(s) "
                                 f"{', '.join(unknown)}")
    # Celery's Queues.add_compat: the binding key is the routing key when none is given.
    return Queue(str(name), exchange=spec.get("exchange"),
                 routing_key=spec.get("routing_key") or spec.get("binding_key"),
                 queue_arguments=dict(spec.get("queue_arguments") or {}),
                 max_priority=spec.get("max_priority"),
                 other=tuple(key for key in _OTHER_KEYS if key in spec))


# The fields that set a queue's x-max-priority (Queue.own_max_priority).
_PRIORITY_FIELDS = frozenset({"max_priority", "queue_arguments['x-max-priority']"})
_NOT_AMQP = ("AMQP declarations: SQLite, Redis and PostgreSQL queues are addressed by name, "
             "priorities are always 0..9")
_ON_RABBITMQ = ("Conveyor's RabbitMQ broker publishes to each queue by name through the "
                "default exchange and declares the queue's arguments itself")
_QUORUM = ("quorum queues have no priorities in RabbitMQ 3.10: queue_type='classic' "
           "honours a queue's max_priority")


def no_effect_reason(queues: Iterable[Queue] | None, rabbitmq: bool,
                     priorities: bool) -> str | None:
    """What the startup warning says of ``task_queues`` (None: nothing to say).

    It names the AMQP fields that do nothing on the broker: all of them off
    RabbitMQ; on RabbitMQ (``rabbitmq``) exchanges, routing keys and queue
    arguments other than ``x-max-priority``, and the maximum itself unless
    the queues honour it (``priorities``: classic queues).  Decided when the
    worker starts, because the broker may be configured after ``task_queues``."""
    used = {f for queue in queues or () for f in queue.amqp_fields}
    if priorities:
        used -= _PRIORITY_FIELDS
    if not used:
        return None
    if not rabbitmq:
        why = _NOT_AMQP
    elif used & _PRIORITY_FIELDS:
        why = f"{_ON_RABBITMQ}; {_QUORUM}"
    else:
        why = _ON_RABBITMQ
    return f"no effect here for {', '.join(sorted(used))}: {why}"


def own_max_priorities(queues: Iterable[Queue] | None) -> dict[str, int]:
    """The queues with a maximum priority of their own, and that maximum (what
    the RabbitMQ broker takes as its ``queue_max_priority`` option)."""
    maxima = {queue.name: queue.own_max_priority for queue in queues or ()}
    return {name: maximum for name, maximum in maxima.items() if maximum is not None}


def queue_name(value: Any) -> str:
    """A route's ``queue`` (a name or a Queue-like object) as a name."""
    return value if isinstance(value, str) else as_queue(value, "queue").name


def queue_names(queues: Iterable[Any] | None) -> list[str]:
    return [queue_name(q) for q in queues or ()]


def check_declared(name: str, declared: Iterable[Any] | None, default_queue: str) -> None:
    """Celery's ``task_create_missing_queues = False``: only declared queues take tasks."""
    known = queue_names(declared) if declared is not None else [default_queue]
    if name not in known:
        raise QueueNotFound(
            f"queue {name!r} is missing from task_queues ({', '.join(known)}) and "
            "task_create_missing_queues is False")


__all__ = ["Queue", "QueueNotFound", "as_queue", "check_declared", "parse_queues",
           "queue_name", "queue_names"]
