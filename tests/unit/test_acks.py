"""The supervisor's acknowledgement buffer: batching, refusals, broker outages."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

import pytest

from conveyor.brokers.base import Delivery, Envelope
from conveyor.brokers.memory import MemoryBroker
from conveyor.exceptions import BrokerUnavailable
from conveyor.worker.acks import AckBuffer


class FlakyBroker(MemoryBroker):
    """Fails the next ``failures`` ack calls, like a server that went away."""

    def __init__(self) -> None:
        super().__init__(f"memory://acks-{uuid.uuid4().hex}")  # a store of its own
        self.failures = 0
        self.calls = 0

    def ack(self, deliveries: Sequence[Delivery]) -> list[bool]:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailable("ack failed: server gone")
        return super().ack(deliveries)


def leased(broker: MemoryBroker, n: int) -> list[Delivery]:
    broker.enqueue_many([Envelope(id=f"m{i}", queue="q", body=b"x") for i in range(n)])
    return broker.reserve(["q"], n, lease=30, timeout=0)


def test_acks_wait_for_the_delay_then_go_in_one_call() -> None:
    broker = FlakyBroker()
    buffer = AckBuffer(lambda: broker, lease=30, delay=60)
    for delivery in leased(broker, 3):
        buffer.add(delivery)
    buffer.flush_due()
    assert broker.calls == 0 and len(buffer) == 3
    assert 59 < buffer.wait_time(cap=120) <= 60
    buffer.flush()
    assert broker.calls == 1 and len(buffer) == 0
    assert broker.stats(["q"])[0].inflight == 0


def test_a_full_batch_is_sent_without_waiting() -> None:
    broker = FlakyBroker()
    buffer = AckBuffer(lambda: broker, lease=30, delay=60, max_batch=2)
    for delivery in leased(broker, 2):
        buffer.add(delivery)
    buffer.flush_due()
    assert broker.calls == 1 and len(buffer) == 0


def test_acks_survive_a_broker_outage_and_are_sent_later() -> None:
    broker = FlakyBroker()
    broker.failures = 1
    buffer = AckBuffer(lambda: broker, lease=30, delay=0)
    for delivery in leased(broker, 2):
        buffer.add(delivery)
    assert buffer.flush() is False
    assert len(buffer) == 2 and buffer.wait_time(cap=10) > 0  # backs off before retrying
    assert buffer.flush() is True
    assert broker.stats(["q"])[0].inflight == 0


def test_acks_older_than_the_lease_are_left_to_the_lease(
        caplog: pytest.LogCaptureFixture) -> None:
    broker = FlakyBroker()
    broker.failures = 1
    buffer = AckBuffer(lambda: broker, lease=0.0, delay=0)
    for delivery in leased(broker, 1):
        buffer.add(delivery)
    with caplog.at_level(logging.ERROR, logger="conveyor.worker"):
        buffer.flush()
    assert len(buffer) == 0
    assert "leases will hand them out again" in caplog.text


def test_a_refused_ack_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    broker = FlakyBroker()
    [delivery] = leased(broker, 1)
    broker.requeue(delivery)  # the lease moved on: this token no longer holds it
    buffer = AckBuffer(lambda: broker, lease=30, delay=0)
    buffer.add(delivery)
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        assert buffer.flush() is True
    assert "ack of m0 refused" in caplog.text
    assert broker.stats(["q"])[0].ready == 1
