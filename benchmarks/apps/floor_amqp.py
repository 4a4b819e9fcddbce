"""The RabbitMQ floor: the least a task costs through RabbitMQ, in bare pika.

The same guarantees the queues in the RabbitMQ section keep on the wire, and
nothing else: a durable classic queue, persistent messages, a publisher
confirm for every send, and one ``basic.ack`` per task after it ran
(prefetch 100).  No envelope, lease, side store, result record or event.  An
echo's value goes back through a Redis list the caller pops, as the queues'
results go through Redis.  It measures what RabbitMQ and pika alone cost
here, so that issue 20's targets are judged against a measured limit.

Run as ``python -m benchmarks.apps.floor_amqp`` (one worker process).
"""

from __future__ import annotations

import json
import os
from typing import Any

QUEUE = "floor"
#: The budget (benchmarks/rabbitmq_budget.py) sets Conveyor's window of 4 instead.
PREFETCH = int(os.environ.get("BENCH_FLOOR_PREFETCH", "100"))


def url() -> str:
    return os.environ.get("BENCH_FLOOR_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F")


def connect() -> Any:
    import pika

    return pika.BlockingConnection(pika.URLParameters(url()))


def declare(channel: Any) -> None:
    channel.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "classic"})


def persistent() -> Any:
    import pika

    return pika.BasicProperties(delivery_mode=2)


def serve() -> None:
    """Consume, run, ack, until killed."""
    from benchmarks.apps import _counter

    channel = connect().channel()
    declare(channel)
    channel.basic_qos(prefetch_count=PREFETCH)

    def on_message(ch: Any, method: Any, _props: Any, body: bytes) -> None:
        op, value = json.loads(body)
        if op == "incr":
            _counter.incr()
        elif op == "echo":
            _counter._connection().rpush("floor:reply", json.dumps(value))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(QUEUE, on_message)
    channel.start_consuming()


if __name__ == "__main__":
    serve()
