"""The floors (:mod:`benchmarks.apps.floor`, :mod:`benchmarks.apps.floor_amqp`): bare
redis-py, and bare pika with confirms and acks, the least a task costs here.

It is not a peer: the report gives it a table of its own and never counts it
as the fastest peer.  It runs in Conveyor's venv (the same redis-py and
hiredis), one plain process per worker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from benchmarks.systems.base import ROOT, Client, System
from benchmarks.systems.conveyor import ConveyorRedis


class FloorClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import floor

        self.floor = floor
        self.client = floor.connect()

    def enqueue_one(self, n: int) -> None:
        push, queue, message = self.client.rpush, self.floor.QUEUE, self.floor.encode("noop")
        for _ in range(n):
            push(queue, message)

    def preload(self, n: int) -> None:
        message = self.floor.encode("incr")
        for start in range(0, n, 1_000):
            self.client.rpush(self.floor.QUEUE, *[message] * min(1_000, n - start))

    def round_trip(self, value: int) -> Any:
        self.client.rpush(self.floor.QUEUE, self.floor.encode("echo", value))
        got = self.client.blpop([self.floor.REPLY], timeout=30)
        if got is None:
            raise TimeoutError("no reply within 30 s")
        return json.loads(got[1])


class FloorSystem(System):
    name = "floor"
    label = "Floor (bare redis-py)"
    env = ConveyorRedis.env
    requirements = ConveyorRedis.requirements
    packages = ["redis", "hiredis"]
    db = 15
    section = "floor"
    steps = ("enqueue_one", "processing", "latency")
    worker_flags = "python -m benchmarks.apps.floor (one process each): BLPOP, run, RPUSH the reply"

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "benchmarks.apps.floor"] for _ in range(procs)]

    @staticmethod
    def client() -> Client:
        return FloorClient()


class FloorAMQPClient(Client):
    def __init__(self) -> None:
        from benchmarks.apps import _counter, floor, floor_amqp

        self.amqp, self.encode = floor_amqp, floor.encode
        self.redis = _counter._connection()
        self.connection = floor_amqp.connect()
        self.channel = self.connection.channel()
        floor_amqp.declare(self.channel)
        self.channel.confirm_delivery()  # every basic_publish now waits for its confirm
        self.props = floor_amqp.persistent()

    def _send(self, op: str, value: int = 0) -> None:
        self.channel.basic_publish("", self.amqp.QUEUE, self.encode(op, value), self.props)

    def enqueue_one(self, n: int) -> None:
        for _ in range(n):
            self._send("noop")

    def preload(self, n: int) -> None:
        for _ in range(n):
            self._send("incr")

    def round_trip(self, value: int) -> Any:
        self._send("echo", value)
        got = self.redis.blpop(["floor:reply"], timeout=30)
        if got is None:
            raise TimeoutError("no reply within 30 s")
        return json.loads(got[1])

    def close(self) -> None:
        self.connection.close()


class FloorAMQPSystem(FloorSystem):
    name = "floor-amqp"
    label = "Floor (bare pika, confirms and acks)"
    env = "conveyor-amqp"
    requirements = [f"-e {ROOT}[redis,rabbitmq]", "redis==8.1.0", "pika==1.4.4",
                    "typing_extensions==4.16.0"]
    packages = ["pika", "redis"]
    db = 9
    worker_flags = ("python -m benchmarks.apps.floor_amqp (one process each): durable classic "
                    "queue, persistent messages, a confirm per send, an ack per task, "
                    "prefetch 100")

    def __init__(self) -> None:
        from benchmarks.systems import rabbitmq

        rabbitmq.ensure_vhost(self.url)

    @property
    def url(self) -> str:
        from benchmarks.systems import rabbitmq

        return rabbitmq.amqp_url(self.name)

    def environment(self) -> dict[str, str]:
        return {**super().environment(), "BENCH_FLOOR_AMQP": self.url}

    def server_ports(self) -> tuple[int, ...]:
        return (*super().server_ports(), urlsplit(self.url).port or 5672)

    def reset(self) -> None:
        from benchmarks.systems import rabbitmq

        rabbitmq.purge(self.url, ["floor"])

    def worker_commands(self, python: Path, procs: int) -> list[list[str]]:
        return [[str(python), "-m", "benchmarks.apps.floor_amqp"] for _ in range(procs)]

    @staticmethod
    def client() -> Client:
        return FloorAMQPClient()
