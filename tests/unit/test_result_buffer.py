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
from conveyor.resultstores.base import FencedWrite, JoinPart, Written
from conveyor.resultstores.memory import MemoryResultStore
from conveyor.resultstores.record import Attempt
from conveyor.worker.results import (
    ResultBuffer,
    Stored,
    as_report,
    from_report,
    join_from_report,
    join_report,
)

SENT = 1_700_000_000_000_000


class FlakyStore(MemoryResultStore):
    """Fails the next ``failures`` batched writes, like a server that went away."""

    def __init__(self) -> None:
        super().__init__(f"memory://results-{uuid.uuid4().hex}")  # a store of its own
        self.failures = 0
        self.calls = 0

    def set_many_fenced_and_join(self, writes: Sequence[tuple[FencedWrite, JoinPart | None]],
                                 ttl: float) -> list[Written]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise ResultError("store gone")
        return super().set_many_fenced_and_join(writes, ttl)


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


def acked(stored: Sequence[Stored] | None) -> list[Delivery | None]:
    return [s.delivery for s in stored or () if s.ack and s.delivery is not None]


def test_results_at_hand_go_in_one_write_then_their_messages_are_acked() -> None:
    store = FlakyStore()
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    deliveries = leased(3)
    for i, delivery in enumerate(deliveries):
        buffer.add(delivery, True, success(f"t{i}", f"v{i}"))
    buffer.add(None, True, success("lone", "no ack"))  # its slot was given up: written, not acked
    assert buffer.wait_time(cap=5) == 0  # nothing waits for a batch
    assert acked(buffer.flush()) == deliveries
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
    buffer.add(deliveries[0], True, success("t", "stale", 1))
    buffer.add(deliveries[1], True, success("u", "fresh"))
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        stored = buffer.flush()
    # Both are acked: the stale one's ack is refused by the broker's lease token.
    assert acked(stored) == deliveries
    assert value(store, "t") == "newer" and value(store, "u") == "fresh"
    assert "[t]: result refused, a later delivery of the message took over" in caplog.text


def test_results_survive_a_store_outage_and_are_written_later() -> None:
    store = FlakyStore()
    store.failures = 1
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    [delivery] = leased(1)
    buffer.add(delivery, True, success("t", "v"))
    assert buffer.flush() is None
    assert len(buffer) == 1 and buffer.wait_time(cap=10) > 0  # backs off before retrying
    assert buffer.flush() == []  # not yet
    assert acked(buffer.flush(now=True)) == [delivery]
    assert value(store, "t") == "v" and store.calls == 2


def test_results_older_than_the_lease_are_left_to_the_lease(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.failures = 1
    buffer = ResultBuffer(lambda: store, ttl=60, lease=0.0)
    [delivery] = leased(1)
    buffer.add(delivery, True, success("t", "v"))
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        assert buffer.flush() is None
    assert len(buffer) == 0 and store.get("t") is None  # never acked: the task runs again
    assert "their leases will hand them out again" in caplog.text


def test_a_write_crosses_a_pipe_as_a_plain_tuple() -> None:
    write = success("t", "v", 3)
    report = as_report(write)
    assert type(report) is tuple and all(type(v) in (str, bytes, int) for v in report)
    assert from_report(report) == write


def test_a_chord_header_is_joined_with_its_write_and_the_completer_gets_the_parts() -> None:
    store = FlakyStore()
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    deliveries = leased(3)
    buffer.add(deliveries[0], True, success("h1", "one"), JoinPart("c", 1, 2, b"one"))
    buffer.add(deliveries[1], False, success("p", "plain"))  # acked before it ran
    buffer.add(deliveries[2], True, success("h0", "zero"), JoinPart("c", 0, 2, b"zero"))
    assert buffer.flush() == [Stored(deliveries[0], True, None),
                              Stored(deliveries[1], False, None),
                              Stored(deliveries[2], True, [b"zero", b"one"])]
    assert store.calls == 1 and value(store, "h0") == "zero"


def test_a_stale_header_write_does_not_join() -> None:
    store = FlakyStore()
    assert store.set_fenced("h0", states.SUCCESS, success("h0", "newer", 2).payload, 60,
                            Attempt(SENT, 0, 2))
    buffer = ResultBuffer(lambda: store, ttl=60, lease=30)
    deliveries = leased(2)
    buffer.add(deliveries[0], True, success("h0", "stale", 1), JoinPart("c", 0, 2, b"stale"))
    buffer.add(deliveries[1], True, success("h1", "one"), JoinPart("c", 1, 2, b"one"))
    assert [s.parts for s in buffer.flush() or ()] == [None, None]
    assert store.chord_add("c", 0, 2, b"zero", 60) == [b"zero", b"one"]  # the newer run's join


def test_a_join_crosses_a_pipe_as_a_plain_tuple() -> None:
    join = JoinPart("c", 1, 3, b"part")
    report = join_report(join)
    assert type(report) is tuple and join_from_report(report) == join
    assert join_report(None) is None and join_from_report(None) is None
