"""The RabbitMQ section: Conveyor, Celery and Dramatiq on one RabbitMQ vhost.

Each system keeps its results (and Conveyor its side store) in the benchmark
Redis, as the Redis section does, so the broker is the one thing that
differs.  Every enqueue waits for RabbitMQ's publisher confirm: Conveyor
always does, Celery is given ``confirm_publish=True`` and Dramatiq
``confirm_delivery=True``, so no system is timed losing messages.

Each system has a vhost of its own, ``conveyor-bench-<system>`` (the prefix
from ``BENCH_AMQP_URL``, default ``.../conveyor-bench``), so that no system
meets another's queue of the same name and arguments; they are created with
``rabbitmqctl`` when missing, and the test suite's vhosts are never used.
Between phases each system's own queues are purged by name.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any
from urllib.parse import unquote, urlsplit

from benchmarks.systems.base import ROOT, System
from benchmarks.systems.celery import CelerySystem
from benchmarks.systems.conveyor import ConveyorRedis
from benchmarks.systems.dramatiq import DramatiqSystem

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/conveyor-bench"


def amqp_url(system: str) -> str:
    """The URL of ``system``'s vhost: the benchmark prefix and the system's name."""
    return f"{os.environ.get('BENCH_AMQP_URL', DEFAULT_URL)}-{system}"


def _connect(url: str) -> Any:
    import pika

    parts = urlsplit(url)
    return pika.BlockingConnection(pika.ConnectionParameters(
        parts.hostname or "127.0.0.1", parts.port or 5672, unquote(parts.path[1:]) or "/",
        pika.PlainCredentials(unquote(parts.username or "guest"),
                              unquote(parts.password or "guest")),
        connection_attempts=1))


def ensure_vhost(url: str) -> None:
    """Create the vhost of ``url`` (and guest's rights on it) when it is missing."""
    import pika

    try:
        _connect(url).close()
        return
    except pika.exceptions.AMQPConnectionError:
        pass
    vhost = unquote(urlsplit(url).path[1:])
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                   check=True, capture_output=True)


def purge(url: str, queues: list[str]) -> None:
    """Empty the named queues that exist (a missing one closes only its probe channel)."""
    import pika

    conn = _connect(url)
    for name in queues:
        ch = conn.channel()
        try:
            ch.queue_purge(name)
            ch.close()
        except pika.exceptions.ChannelClosedByBroker:
            continue
    conn.close()


class _OnRabbitMQ(System):
    """What the three have in common: the vhost, made ready on construction."""

    queues: list[str] = []
    broker_variable = ""  # what the system's app module reads its broker URL from

    def __init__(self) -> None:
        ensure_vhost(self.url)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env[self.broker_variable] = self.url
        return env

    @property
    def url(self) -> str:
        return amqp_url(self.name)

    def server_ports(self) -> tuple[int, ...]:
        return (*super().server_ports(), urlsplit(self.url).port or 5672)

    def reset(self) -> None:
        purge(self.url, self.queues)


class ConveyorAMQP(_OnRabbitMQ, ConveyorRedis):
    name = "conveyor-amqp"
    label = "Conveyor (RabbitMQ)"
    env = "conveyor-amqp"
    requirements = [f"-e {ROOT}[redis,rabbitmq]", "redis==8.1.0", "pika==1.4.4",
                    "typing_extensions==4.16.0"]
    packages = ["conveyor", "pika", "redis", "hiredis"]
    db = 5
    queues = ["default", "conveyor.dead.default"]
    bulk_path = ("app.send_many(name, calls): every publish on the wire, then one wait "
                 "for all their confirms (500 at a time)")
    worker_flags = ConveyorRedis.worker_flags + "  (quorum queues; results and side store: Redis)"
    broker_variable = "BENCH_CONVEYOR_BROKER"

    def environment(self) -> dict[str, str]:
        env = super().environment()
        env["BENCH_CONVEYOR_BACKEND"] = env["BENCH_REDIS_URL"]
        return env


class ConveyorAMQPClassic(ConveyorAMQP):
    """Classic queues, as Celery's and Dramatiq's are: a quorum queue confirms a
    publish only once its Raft log is on disk, a classic one sooner."""

    name = "conveyor-amqp-classic"
    label = "Conveyor (RabbitMQ, classic queues)"
    db = 8
    worker_flags = ConveyorRedis.worker_flags + (
        "  (queue_type=classic; results and side store: Redis)")

    @property
    def url(self) -> str:
        return f"{amqp_url(self.name)}?queue_type=classic"


class CeleryAMQP(_OnRabbitMQ, CelerySystem):
    name = "celery-amqp"
    label = "Celery (RabbitMQ)"
    env = "celery"  # kombu speaks AMQP through py-amqp, a dependency of celery itself
    packages = ["celery", "kombu", "amqp", "redis"]
    db = 6
    queues = ["celery"]
    bulk_path = "group(...).apply_async(): one confirmed publish per task"
    worker_flags = CelerySystem.worker_flags + "  (confirm_publish=True; results: Redis)"
    broker_variable = "BENCH_CELERY_BROKER"


class DramatiqAMQP(_OnRabbitMQ, DramatiqSystem):
    name = "dramatiq-amqp"
    label = "Dramatiq (RabbitMQ)"
    env = "dramatiq-amqp"
    requirements = ["dramatiq[redis,rabbitmq]==2.2.1"]
    packages = ["dramatiq", "pika", "redis"]
    db = 7
    queues = ["default", "default.DQ", "default.XQ"]
    bulk_path = "group(...).run(): one confirmed publish per task"
    worker_flags = DramatiqSystem.worker_flags + "  (confirm_delivery=True; results: Redis)"
    broker_variable = "BENCH_DRAMATIQ_BROKER"
