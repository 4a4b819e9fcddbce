"""Broker implementations, chosen by URL scheme through :data:`BROKERS`."""

from __future__ import annotations

from conveyor import _redact as redact
from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats
from conveyor.schemes import Family, scheme_of

__all__ = ["BROKERS", "Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats",
           "broker_from_url"]

_REDIS = "conveyor.brokers.redis:RedisBroker"
_POSTGRES = "conveyor.brokers.postgres:PostgresBroker"
_AMQP = "conveyor.brokers.amqp:AMQPBroker"

#: Scheme → broker class, called as ``cls(url, **broker_transport_options)``.
#: Third-party brokers register under the ``conveyor.brokers`` entry-point group.
BROKERS = Family("broker", "conveyor.brokers", {
    "memory": "conveyor.brokers.memory:MemoryBroker",
    "sqlite": "conveyor.brokers.sqlite:SQLiteBroker",
    "redis": _REDIS, "rediss": _REDIS, "unix": _REDIS, "sentinel": _REDIS,
    # Sharded when queue_shards asks (docs/decisions/0027-queue-shards.md).
    "redis+cluster": "conveyor.brokers.redis_sharded:cluster_broker",
    "postgresql": _POSTGRES, "postgres": _POSTGRES,
    "amqp": _AMQP, "amqps": _AMQP, "pyamqp": _AMQP,  # RabbitMQ
}, hint="use sqlite:///path.db, redis://host:port/db, postgresql://user@host/dbname, "
        "amqp://user:password@host:port/vhost or memory://")


def broker_from_url(url: str, options: dict[str, object] | None = None) -> Broker:
    """Open the broker a URL names: ``sqlite://``, ``redis://``/``rediss://``,
    ``amqp://``/``amqps://``/``pyamqp://`` (RabbitMQ), ``postgresql://``/``postgres://``,
    ``memory://``, or a scheme a plug-in registered."""
    opts = dict(options or {})
    # Read by the app, which hands brokers a priority already grouped in its step.
    opts.pop("priority_steps", None)
    scheme = scheme_of(url) if "://" in url else ""
    cls = BROKERS.load(scheme, setting="broker_url", url_for_error=redact.url(url))
    broker: Broker = cls(url, **opts)
    return broker
