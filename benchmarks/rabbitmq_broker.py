"""A tiny measure of the RabbitMQ broker (not a test, not the side-by-side benchmark).

    python -m benchmarks.rabbitmq_broker amqp://guest:guest@127.0.0.1:5672/ quorum

Prints: enqueues with publisher confirms one by one per second, reserve(10) and
ack per second, and one message's enqueue, reserve and ack in milliseconds.
"""

from __future__ import annotations

import sys
import tempfile
import time
import uuid

from conveyor.brokers import Envelope, broker_from_url

N = 2000


def main(url: str, queue_type: str) -> str:
    state = f"sqlite:///{tempfile.mkdtemp()}/state.db"
    broker = broker_from_url(url, {"queue_type": queue_type, "state_url": state})
    queue = f"bench-{queue_type}-{uuid.uuid4().hex[:6]}"
    broker.enqueue(Envelope(id="warm", queue=queue, body=b"x"))  # declares the topology
    broker.ack(broker.reserve([queue], 1, 30, 1))
    body = b'{"task":"t","args":[1,2]}'
    start = time.perf_counter()
    for i in range(N):
        broker.enqueue(Envelope(id=str(i), queue=queue, body=body))
    enqueue = N / (time.perf_counter() - start)
    start, done = time.perf_counter(), 0
    while done < N:
        got = broker.reserve([queue], 10, 30, 1)
        broker.ack(got)
        done += len(got)
    consume = N / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(200):
        broker.enqueue(Envelope(id=f"r{i}", queue=queue, body=body))
        broker.ack(broker.reserve([queue], 1, 30, 1))
    one = (time.perf_counter() - start) / 200 * 1000
    broker.purge(queue)
    broker.close()
    return (f"{queue_type}: enqueue with confirms {enqueue:.0f}/s, reserve(10)+ack "
            f"{consume:.0f}/s, enqueue+reserve+ack {one:.2f} ms")


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "amqp://guest:guest@127.0.0.1:5672/",
               sys.argv[2] if len(sys.argv) > 2 else "quorum"))
