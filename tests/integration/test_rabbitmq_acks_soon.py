"""Acknowledgements a consumer sends together (``ack_soon``) on RabbitMQ.

docs/decisions/0035-rabbitmq-acks-sent-together.md: the ack of a finished
task is held back a few milliseconds and goes with the next reserve, a
renewal, or a background thread, in one ``multiple`` frame.  These tests
check that a held-back ack is really sent by each of those ways -- a
message acknowledged that way is not handed out again when the connection
goes afterwards -- and that one held back and one sent at once never
acknowledge a tag twice (RabbitMQ would close the channel).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from conveyor.brokers import Envelope, broker_from_url
from conveyor.brokers.amqp import _ACK_DELAY, AMQPBroker

QUEUE = "soon"  # wiped before and after each test (tests/conftest.py)
LEASE = 60.0


@pytest.fixture
def broker(amqp_url: str) -> Iterator[AMQPBroker]:
    b = broker_from_url(amqp_url)
    assert isinstance(b, AMQPBroker)
    yield b
    b.close()


def _send(broker: AMQPBroker, *ids: str) -> None:
    broker.enqueue_many([Envelope(id=i, queue=QUEUE, body=b"x") for i in ids])


def _reserve(broker: AMQPBroker, n: int) -> list:
    got: list = []
    deadline = time.monotonic() + 10
    while len(got) < n and time.monotonic() < deadline:
        got += broker.reserve([QUEUE], n - len(got), LEASE, timeout=1)
    assert len(got) == n
    return got


def _left_after_drop(broker: AMQPBroker, amqp_url: str) -> list[str]:
    """Drop the consuming connection as a dying process would (nothing flushed), then
    what another consumer is handed.  A round trip on the consuming channel first
    (``stats``, which sends nothing held back): RabbitMQ has then taken the acks sent
    before it, which a connection closed right after them may lose."""
    broker.stats([QUEUE])
    with broker._consumer.lock:
        broker._consumer.drop()
    other = broker_from_url(amqp_url)
    got: list = []
    try:
        # A copy handed out again waits redelivery_wait before it is leased (ADR 0031).
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            got += other.reserve([QUEUE], 10, LEASE, timeout=0.2)
        other.ack(got)
        return sorted(d.id for d in got)
    finally:
        other.close()


def test_a_held_back_ack_goes_with_the_next_reserve(broker: AMQPBroker, amqp_url: str) -> None:
    _send(broker, "a", "b", "c")
    a, b = _reserve(broker, 2)

    assert broker.ack_soon([a]) == [True]
    assert broker.ack_soon([b]) == [True]
    assert broker._later, "held back, not sent yet"
    [c] = _reserve(broker, 1)
    assert not broker._later, "the reserve sent them"
    assert broker.ack([c]) == [True]
    assert _left_after_drop(broker, amqp_url) == []


def test_a_held_back_ack_is_sent_within_the_delay_without_another_call(
        broker: AMQPBroker, amqp_url: str) -> None:
    """A long task began after it: the background thread sends it."""
    _send(broker, "a", "b")
    a, _b = _reserve(broker, 2)
    assert broker.ack_soon([a]) == [True]
    deadline = time.monotonic() + 5
    while broker._later and time.monotonic() < deadline:
        time.sleep(_ACK_DELAY)
    assert not broker._later
    assert _left_after_drop(broker, amqp_url) == ["b"], "a was acknowledged, b still held"


def test_flush_acks_sends_them_at_once(broker: AMQPBroker, amqp_url: str) -> None:
    _send(broker, "a")
    [a] = _reserve(broker, 1)
    broker._sender_pid = os.getpid()  # as if its thread ran: none starts to send it first
    assert broker.ack_soon([a]) == [True]
    assert broker._later
    broker.flush_acks()
    assert not broker._later
    assert _left_after_drop(broker, amqp_url) == []


def test_held_back_and_immediate_acks_never_ack_a_tag_twice(
        broker: AMQPBroker, amqp_url: str) -> None:
    _send(broker, "a", "b", "c", "d")
    a, b, c, d = _reserve(broker, 4)
    assert broker.ack_soon([a, c]) == [True, True]
    assert broker.ack([b]) == [True]  # sends a and c with it (b's tag is not the lowest)
    assert not broker._later
    assert broker.ack_soon([d]) == [True]
    broker.flush_acks()
    assert broker._consumer.channel is not None and broker._consumer.channel.is_open
    assert broker.extend([a], LEASE) == [False]  # settled, not held
    assert _left_after_drop(broker, amqp_url) == []


def test_a_lost_lease_is_refused_at_once(broker: AMQPBroker) -> None:
    _send(broker, "a")
    [a] = _reserve(broker, 1)
    with broker._consumer.lock:
        broker._consumer.drop()  # the connection went while the task ran
    assert broker.ack_soon([a]) == [False]
    assert not broker._later


def test_held_back_acks_of_a_broken_connection_are_forgotten(
        broker: AMQPBroker, amqp_url: str) -> None:
    """The price: RabbitMQ hands them out again (they run once more), and no tag of
    the old channel is sent on the new one."""
    _send(broker, "a")
    [a] = _reserve(broker, 1)
    broker._sender_pid = os.getpid()  # as if its thread ran: none starts to send it
    assert broker.ack_soon([a]) == [True]
    assert _left_after_drop(broker, amqp_url) == ["a"]
    assert not broker._later
    _send(broker, "b")
    [b] = _reserve(broker, 1)  # a fresh channel: its tags start at 1 again
    assert broker.ack([b]) == [True]
