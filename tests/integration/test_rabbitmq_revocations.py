"""Each consuming process on RabbitMQ knows the revoked ids itself, from the
revocation stream (docs/decisions/0028-rabbitmq-revocation-stream.md).

The consumer here is given a side store of its own, which never hears of the
revocations: a flag it reports can only have come from the stream.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import Broker, Delivery, Envelope, broker_from_url

QUEUE = "q"


@pytest.fixture
def brokers(amqp_url: str, tmp_path: Path) -> Iterator[Callable[[str], Broker]]:
    """Brokers on the test's vhost, each with the side store named (a file each)."""
    opened: list[Broker] = []
    base = amqp_url.split("&state_url=", 1)[0]

    def open_one(store: str) -> Broker:
        broker = broker_from_url(f"{base}&state_url=sqlite:///{tmp_path / store}.db")
        opened.append(broker)
        return broker

    yield open_one
    for broker in opened:
        broker.close()


def _flags(consumer: Broker, ids: list[str]) -> dict[str, bool]:
    """Reserve ``ids`` until every lease carries a revocation flag (the feed is
    complete), handing back those leased before; then acknowledge them."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        got: list[Delivery] = []
        while len(got) < len(ids) and time.monotonic() < deadline:
            got += consumer.reserve([QUEUE], len(ids) - len(got), lease=30, timeout=1)
        if all(d.revoked is not None for d in got):
            consumer.ack(got)
            return {d.id: bool(d.revoked) for d in got}
        for d in got:
            consumer.requeue(d, count=False)
    raise AssertionError("the revocation feed never became complete")


def _send(producer: Broker, ids: list[str]) -> None:
    producer.enqueue_many([Envelope(id=i, queue=QUEUE, body=b"{}") for i in ids])


def test_a_task_revoked_before_the_consumer_started_is_flagged(brokers) -> None:
    producer = brokers("producer")
    early = f"early-{uuid.uuid4().hex}"
    producer.revoke([early], ttl=60)
    consumer = brokers("consumer")  # its side store knows nothing of the revoke
    assert consumer.revoked([early]) == {}
    _send(producer, [early, f"{early}~1", "kept"])
    assert _flags(consumer, [early, f"{early}~1", "kept"]) == {
        early: True, f"{early}~1": True, "kept": False}


def test_a_revocation_reaches_a_running_consumer(brokers) -> None:
    producer, consumer = brokers("producer"), brokers("consumer")
    _send(producer, ["warm"])
    assert _flags(consumer, ["warm"]) == {"warm": False}
    late = f"late-{uuid.uuid4().hex}"
    producer.revoke([late], ttl=60, terminate=True)
    assert producer.revoked([late]) == {late: True}  # the side store has it too
    _send(producer, [late, "other"])
    assert _flags(consumer, [late, "other"]) == {late: True, "other": False}


def test_an_expired_revocation_no_longer_flags(brokers) -> None:
    producer, consumer = brokers("producer"), brokers("consumer")
    brief = f"brief-{uuid.uuid4().hex}"
    producer.revoke([brief], ttl=0.3)
    revoked_until = time.monotonic() + 0.3
    _send(producer, ["warm"])
    _flags(consumer, ["warm"])
    while time.monotonic() < revoked_until:  # bounded by the ttl itself
        consumer.reserve([QUEUE], 1, lease=30, timeout=revoked_until - time.monotonic())
    _send(producer, [brief])
    assert _flags(consumer, [brief]) == {brief: False}


def test_revocations_made_while_the_consumer_was_cut_off_are_read_on_reconnect(
        brokers) -> None:
    producer, consumer = brokers("producer"), brokers("consumer")
    _send(producer, ["warm"])
    _flags(consumer, ["warm"])
    link = consumer._consumer  # type: ignore[attr-defined]
    assert link.conn is not None
    link.conn.close()  # as RabbitMQ closing it: the next call reconnects
    missed = f"missed-{uuid.uuid4().hex}"
    producer.revoke([missed], ttl=60)
    _send(producer, [missed])
    assert _flags(consumer, [missed]) == {missed: True}
