"""Dramatiq: Redis broker, Results (Redis) and GroupCallbacks (Redis) middleware.

``BENCH_DRAMATIQ_BROKER`` puts the broker on RabbitMQ instead (the RabbitMQ
section), with ``confirm_delivery=True`` as the others there confirm.

Every actor stores its result (``store_results=True``), as Celery does by
default, so the processing run compares like with like.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimiterBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from benchmarks.apps import _counter

AMQP = os.environ.get("BENCH_DRAMATIQ_BROKER")
if AMQP:
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker: dramatiq.Broker = RabbitmqBroker(url=AMQP, confirm_delivery=True)
else:
    broker = RedisBroker(url=_counter.url())
result_backend = RedisBackend(url=_counter.url())
broker.add_middleware(Results(backend=result_backend))
broker.add_middleware(GroupCallbacks(RateLimiterBackend(url=_counter.url())))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench.noop", store_results=True)
def noop() -> None:
    return None


@dramatiq.actor(actor_name="bench.incr", store_results=True)
def incr() -> int:
    return _counter.incr()


@dramatiq.actor(actor_name="bench.echo", store_results=True)
def echo(value: Any) -> Any:
    return value


@dramatiq.actor(actor_name="bench.collect", store_results=True)
def collect() -> int:
    return 1
