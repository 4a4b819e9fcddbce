"""Broker implementations, chosen by URL scheme."""

from __future__ import annotations

from conveyor.brokers.base import Broker, DeadLetter, Delivery, Envelope, QueueStats
from conveyor.exceptions import ConfigurationError

__all__ = ["Broker", "DeadLetter", "Delivery", "Envelope", "QueueStats", "broker_from_url"]


def broker_from_url(url: str, options: dict[str, object] | None = None) -> Broker:
    """Open the broker a URL names: ``sqlite://``, ``redis://``/``rediss://``,
    ``amqp://``/``amqps://``/``pyamqp://`` (RabbitMQ), ``postgresql://``/``postgres://``,
    ``memory://``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    opts = dict(options or {})
    # Read by the app, which hands brokers a priority already grouped in its step.
    opts.pop("priority_steps", None)
    if scheme == "memory":
        from conveyor.brokers.memory import MemoryBroker

        return MemoryBroker(url)
    if scheme == "sqlite":
        from conveyor.brokers.sqlite import SQLiteBroker

        return SQLiteBroker(url, **opts)
    if scheme in ("redis", "rediss", "unix", "sentinel"):
        from conveyor.brokers.redis import RedisBroker

        return RedisBroker(url, **opts)
    if scheme in ("postgresql", "postgres"):
        from conveyor.brokers.postgres import PostgresBroker

        return PostgresBroker(url, **opts)
    if scheme in ("amqp", "amqps", "pyamqp"):
        try:
            from conveyor.brokers.amqp import AMQPBroker
        except ModuleNotFoundError as exc:
            if exc.name != "pika":
                raise
            raise ConfigurationError(
                f"broker_url is {scheme}:// (RabbitMQ), whose client is not installed: "
                "pip install 'conveyor[rabbitmq]'") from None

        return AMQPBroker(url, **opts)
    raise ConfigurationError(
        f"broker_url {url!r}: unsupported scheme {scheme!r}; use sqlite:///path.db, "
        "redis://host:port/db, postgresql://user@host/dbname, "
        "amqp://user:password@host:port/vhost or memory://"
    )
