"""System adapters, by name.  See :mod:`benchmarks.systems.base` for the interface."""

from __future__ import annotations

import importlib
import os

from benchmarks.systems.base import Client, NotSupported, System

__all__ = ["ALL", "RABBITMQ", "Client", "NotSupported", "System", "get", "redis_url"]

# name -> module:class, in report order (Conveyor first, Celery as the baseline).
_REGISTRY = {
    "conveyor-redis": "benchmarks.systems.conveyor:ConveyorRedis",
    "conveyor-redis-noresult": "benchmarks.systems.conveyor:ConveyorRedisNoResult",
    "conveyor-sqlite": "benchmarks.systems.conveyor:ConveyorSQLite",
    "celery": "benchmarks.systems.celery:CelerySystem",
    "dramatiq": "benchmarks.systems.dramatiq:DramatiqSystem",
    "rq": "benchmarks.systems.rq:RQSystem",
    "huey": "benchmarks.systems.huey:HueySystem",
    "huey-noresult": "benchmarks.systems.huey:HueyNoResult",
    "huey-sqlite": "benchmarks.systems.huey_sqlite:HueySQLiteSystem",
    "arq": "benchmarks.systems.arq:ArqSystem",
    "taskiq": "benchmarks.systems.taskiq:TaskiqSystem",
    # Not a peer: bare redis-py, the least a task costs here (its own table).
    "floor": "benchmarks.systems.floor:FloorSystem",
    # The RabbitMQ section (``--rabbitmq``), run apart from the Redis one.
    "conveyor-amqp-classic": "benchmarks.systems.rabbitmq:ConveyorAMQPClassic",
    "conveyor-amqp": "benchmarks.systems.rabbitmq:ConveyorAMQP",
    "celery-amqp": "benchmarks.systems.rabbitmq:CeleryAMQP",
    "dramatiq-amqp": "benchmarks.systems.rabbitmq:DramatiqAMQP",
    "floor-amqp": "benchmarks.systems.floor:FloorAMQPSystem",
    # The PostgreSQL section (its own table in the report; skipped when no server answers).
    "conveyor-postgres": "benchmarks.systems.conveyor:ConveyorPostgres",
    "procrastinate": "benchmarks.systems.procrastinate:ProcrastinateSystem",
    "pgqueuer": "benchmarks.systems.pgqueuer:PgQueuerSystem",
}
RABBITMQ = ["conveyor-amqp-classic", "conveyor-amqp", "celery-amqp", "dramatiq-amqp",
            "floor-amqp"]
ALL = [name for name in _REGISTRY if name not in RABBITMQ]


def get(name: str) -> type[System]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise SystemExit(f"unknown system {name!r}; choose from {', '.join(ALL)}") from None
    module, _, attr = target.partition(":")
    cls: type[System] = getattr(importlib.import_module(module), attr)
    return cls


def redis_url(db: int) -> str:
    host = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
    port = os.environ.get("BENCH_REDIS_PORT", "6379")
    return f"redis://{host}:{port}/{db}"
