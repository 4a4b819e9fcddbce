"""The floor: the least a Redis task queue can do per task, in bare redis-py.

A message is a small JSON list pushed with ``RPUSH``; each worker process pops
with ``BLPOP``, runs the task (the same INCR, or an echo) and, for an echo,
pushes the value to the reply list the caller waits on with ``BLPOP``.  There
is no envelope, no lease, no ack, no result record and no event: nothing a
real queue must do to lose nothing.  The benchmark runs it beside the queues
so that "how close to the machine's limit" is a measured number, not a guess
(issue 22, target 3: the round trip's physical floor).

Run as ``python -m benchmarks.apps.floor`` (one worker process).
"""

from __future__ import annotations

import json
import os
from typing import Any

QUEUE = "floor:queue"
REPLY = "floor:reply"


def connect() -> Any:
    import redis

    return redis.Redis.from_url(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))


def encode(op: str, value: int = 0) -> bytes:
    return json.dumps([op, value]).encode()


def serve() -> None:
    """Pop and run messages until killed."""
    from benchmarks.apps import _counter

    client = connect()
    while True:
        _, raw = client.blpop([QUEUE])
        op, value = json.loads(raw)
        if op == "incr":
            _counter.incr()
        elif op == "echo":
            client.rpush(REPLY, json.dumps(value))


if __name__ == "__main__":
    serve()
