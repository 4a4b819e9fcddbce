"""Case 7: garbage injected straight into a queue is dead-lettered with its reason.

Malformed JSON, bytes that are not UTF-8, a task no worker knows, and a body
above ``task_message_max_bytes`` go to the dead-letter queue, each with a
reason that says what was wrong; good messages around them run, and the
worker's children do not die (guarantee 5).
"""

from __future__ import annotations

import json
import uuid

import pytest

from conveyor import Conveyor
from conveyor.brokers import Envelope
from conveyor.exceptions import SerializationError

from ..integration.processes import Ledger, children_of, wait_for
from .harness import Figures, Workers, assert_nothing_lost, report, settled, task, total_queue

LIMIT = 1024 * 1024

BAD = {
    "malformed JSON": (b'{"id": "x", "task": ', "body is not JSON"),
    "not UTF-8": (b"\xff\xfe\x00\x81 binary", "body is not UTF-8"),
    "unknown task": (b'{"id": "%s", "task": "nobody.registered.this", "v": 1}',
                     "unknown task 'nobody.registered.this'"),
    "oversized": (json.dumps({"id": "%s", "task": task("sleep"), "v": 1,
                              "args": ["x" * (2 * LIMIT)]}).encode(),
                  f"above task_message_max_bytes={LIMIT}"),
}


def test_garbage_in_the_queue_is_dead_lettered_with_its_reason(
        client: Conveyor, workers: Workers, ledger: Ledger, backend: str) -> None:
    good = [client.send_task(task("sleep"), [0]).id for _ in range(10)]
    bad: dict[str, str] = {}
    for body, reason in BAD.values():
        message_id = uuid.uuid4().hex
        filled = body.replace(b"%s", message_id.encode())
        client.broker.enqueue(Envelope(id=message_id, queue="default", body=filled))
        bad[message_id] = reason
    good += [client.send_task(task("sleep"), [0]).id for _ in range(10)]
    worker = workers.start("-c", "2", task_message_max_bytes=LIMIT)
    wait_for(lambda: len(children_of(worker.pid)) == 2, 30, "the children to start")
    children = set(children_of(worker.pid))

    ids = [*good, *bad]
    wait_for(lambda: settled(client.broker, ledger, ids), 60, "every message settled")
    total = total_queue(client.broker, ledger, ids)
    assert_nothing_lost(total)
    assert set(total.dead) == set(bad)
    for message_id, reason in bad.items():
        assert reason in total.dead[message_id], (reason, total.dead[message_id])
    assert all(total.completed[i] == 1 for i in good)
    assert worker.poll() is None
    assert set(children_of(worker.pid)) == children, "no child died on bad input"
    report(Figures("7 bad input injected into the queue", backend, len(ids), len(bad),
                   len(total.lost), len(total.duplicates), None,
                   "4 dead-lettered with reasons, 20 good ran"))


def test_an_oversized_message_is_refused_at_send(client: Conveyor) -> None:
    client.conf.update({"task_message_max_bytes": LIMIT})
    with pytest.raises(SerializationError, match=f"above task_message_max_bytes={LIMIT}"):
        client.send_task(task("sleep"), ["x" * (2 * LIMIT)])
    assert client.broker.stats(["default"])[0].ready == 0
