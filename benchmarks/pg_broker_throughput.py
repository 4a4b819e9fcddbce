"""One-off throughput of the PostgreSQL broker on a local server (numbers, not a test).

    .venv/bin/python benchmarks/pg_broker_throughput.py [N] [DSN]

Enqueues N messages one by one, 4N with ``enqueue_many`` (1,000 per call),
then reserves and acks them 1 and 10 at a time, in a schema of its own that
is dropped afterwards.  Set ``PGOPTIONS="-c synchronous_commit=off"`` to see
the cost without waiting for the disk at each commit.
"""

from __future__ import annotations

import sys
import time
import uuid

import psycopg

from conveyor.brokers import Broker, Envelope, broker_from_url

BODY = b'{"task":"add","args":[1,2]}' * 4


def rate(count: int, started: float) -> str:
    return f"{count / (time.perf_counter() - started):,.0f} msg/s"


def drain(broker: Broker, batch: int, limit: int) -> str:
    started, done = time.perf_counter(), 0
    while done < limit:
        got = broker.reserve(["q"], batch, lease=30, timeout=0)
        if not got:
            break
        broker.ack(got)
        done += len(got)
    return rate(done, started)


def main(n: int, dsn: str) -> None:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    broker = broker_from_url(f"{dsn}?schema={schema}")
    try:
        started = time.perf_counter()
        for _ in range(n):
            broker.enqueue(Envelope(uuid.uuid4().hex, "q", BODY))
        print(f"enqueue one by one:           {rate(n, started)}")
        envelopes = [Envelope(uuid.uuid4().hex, "q", BODY) for _ in range(4 * n)]
        started = time.perf_counter()
        for i in range(0, len(envelopes), 1000):
            broker.enqueue_many(envelopes[i:i + 1000])
        print(f"enqueue_many (1,000 a call):  {rate(len(envelopes), started)}")
        print(f"reserve + ack, 1 at a time:   {drain(broker, 1, n)}")
        print(f"reserve + ack, 10 at a time:  {drain(broker, 10, 4 * n)}")
    finally:
        broker.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3000,
         sys.argv[2] if len(sys.argv) > 2 else "postgresql://postgres@127.0.0.1:5432/test")
