"""taskiq: RedisStreamBroker (acknowledged messages) and the Redis result backend."""

from __future__ import annotations

from typing import Any

from taskiq_redis import RedisAsyncResultBackend, RedisStreamBroker

from benchmarks.apps import _counter

# consumer_id="0": a consumer group made after tasks were queued still sees them.
broker = RedisStreamBroker(url=_counter.url(), queue_name="bench", consumer_id="0")
broker = broker.with_result_backend(RedisAsyncResultBackend(redis_url=_counter.url()))


@broker.task(task_name="bench.noop")
async def noop() -> None:
    return None


@broker.task(task_name="bench.incr")
async def incr() -> int:
    return await _counter.aincr()


@broker.task(task_name="bench.echo")
async def echo(value: Any) -> Any:
    return value
