"""The supervisor's result buffer: one write for the results at hand, the fence
kept per result, acks only after the write, store outages."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence

import pytest

from conveyor import states
from conveyor.brokers.base import Delivery, Envelope
from conveyor.brokers.memory import MemoryBroker
from conveyor.exceptions import ResultError
from conveyor.resultstores.base import FencedWrite
from conveyor.resultstores.memory import MemoryResultStore
from conveyor.resultstores.record import Attempt
from conveyor.worker.results import ResultBuffer, as_report, from_report

SENT = 1_700_000_000_000_000


class FlakyStore(MemoryResultStore):
    """Fails the next ``failures`` batched writes, like a server that went away."""

    def __init__(self) -> None:
        super().__init__(f"memory://results-{uuid.uuid4().hex}")  # a store of its own
        self.failures = 0
        self.calls = 0

    def set_many_fenced(self, writes: Sequence[FencedWrite], ttl: float) -> list[bool]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ResultError("store gone")
        return super().set_many_fenced(writes, ttl)


def leased(n: int) -> list[Delivery]:
    broker = MemoryBroker(f"memory://results-{uuid.uuid4().hex}")
    broker.enqueue_many([Envelope(id=f"m{i}", queue="q", body=b"x") for i in range(n)])
    return broker.reserve(["q"], n, lease=30, timeout=0)


def success(task_id: str, value: str, deliveries: int = 1) -> FencedWrite:
    attempt = Attempt(SENT, 0, deliveries)
    payload = json.dumps({"task_id": task_id, "result": value,
                          "attempt": attempt.as_list()}).encode()
    return FencedWrite(task_id, states.SUCCESS, payload, attempt)


def value(store: MemoryResultStore, task_id: str) -> str:
    found = store.get(task_id)
    assert found is not None
    return str(json.loads(found.payload)["result"])


def test_results_at_hand_go_in_one_write_then_their_messages_are_acked() -> None:
    store = FlakyStore()
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    deliveries = leased(3)
    for i, delivery in enumerate(deliveries):
        buffer.add(delivery, success(f"t{i}", f"v{i}"))
    buffer.add(None, success("lone", "no ack"))  # its slot was given up: written, not acked
    assert buffer.wait_time(cap=5) == 0  # nothing waits for a batch
    assert buffer.flush() == deliveries
    assert store.calls == 1 and len(buffer) == 0
    assert [value(store, f"t{i}") for i in range(3)] + [value(store, "lone")] == \
        ["v0", "v1", "v2", "no ack"]
    assert buffer.flush() == [] and store.calls == 1


def test_a_stale_result_is_refused_alone_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    assert store.set_fenced("t", states.SUCCESS, success("t", "newer", 2).payload, 60,
                            Attempt(SENT, 0, 2))
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    deliveries = leased(2)
    buffer.add(deliveries[0], success("t", "stale", 1))
    buffer.add(deliveries[1], success("u", "fresh"))
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        acked = buffer.flush()
    # Both are acked: the stale one's ack is refused by the broker's lease token.
    assert acked == deliveries
    assert value(store, "t") == "newer" and value(store, "u") == "fresh"
    assert "[t]: result refused, a later delivery of the message took over" in caplog.text


def test_results_survive_a_store_outage_and_are_written_later() -> None:
    store = FlakyStore()
    store.failures = 1
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    [delivery] = leased(1)
    buffer.add(delivery, success("t", "v"))
    assert buffer.flush() is None
    assert len(buffer) == 1 and buffer.wait_time(cap=10) > 0  # backs off before retrying
    assert buffer.flush() == []  # not yet
    assert buffer.flush(now=True) == [delivery]
    assert value(store, "t") == "v" and store.calls == 2


def test_results_older_than_the_lease_are_left_to_the_lease(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.failures = 1
    buffer = ResultBuffer(lambda: store, ttl=60, lease=0.0)
    [delivery] = leased(1)
    buffer.add(delivery, success("t", "v"))
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        assert buffer.flush() is None
    assert len(buffer) == 0 and store.get("t") is None  # never acked: the task runs again
    assert "their leases will hand them out again" in caplog.text


def test_a_write_crosses_a_pipe_as_a_plain_tuple() -> None:
    write = success("t", "v", 3)
    report = as_report(write)
    assert type(report) is tuple and all(type(v) in (str, bytes, int) for v in report)
    assert from_report(report) == write
