"""RabbitMQ leases that outlive their connection, and sends that fail cleanly
(docs/decisions/0022-rabbitmq-reconnection.md).

A delivery held longer than its lease takes a running record in the side
store.  When its connection goes (here: dropped by the holder's broker
object, as a network blip or ``consumer_timeout`` would), RabbitMQ hands the
message out again; the receiver parks it while the record is renewed, drops
it once the holder settled it, and runs it once the record lapsed (the holder
died).  The fault suite runs the same through real workers
(``tests/faults/test_rabbitmq_faults.py``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.brokers import Envelope, broker_from_url
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerUnavailable

LEASE = 0.6


@pytest.fixture
def pair(amqp_quorum_url: str) -> Iterator[tuple[AMQPBroker, AMQPBroker]]:
    """Two processes' worth of broker objects on one vhost and side store."""
    first, second = broker_from_url(amqp_quorum_url), broker_from_url(amqp_quorum_url)
    assert isinstance(first, AMQPBroker) and isinstance(second, AMQPBroker)
    yield first, second
    first.close()
    second.close()


def held_past_its_lease(broker: AMQPBroker) -> Delivery:
    """Enqueue and reserve one message, renewing until it outlived its lease."""
    broker.enqueue(Envelope(id="long", queue="q", body=b"x"))
    [held] = broker.reserve(["q"], 1, lease=LEASE, timeout=5)
    deadline = time.monotonic() + LEASE * 1.5
    while time.monotonic() < deadline:
        assert broker.extend([held], LEASE) == [True]
        time.sleep(LEASE / 4)
    return held


def reserve_for(broker: AMQPBroker, seconds: float) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + seconds
    while not got and time.monotonic() < deadline:
        got = broker.reserve(["q"], 1, lease=LEASE, timeout=0.1)
    return got


def test_a_held_message_whose_connection_dropped_is_parked_then_dropped(
        pair: tuple[AMQPBroker, AMQPBroker]) -> None:
    """For a lease and a half after the drop (the copy is held back, parked and
    checked again on arrival within it) the other consumer gets nothing while the
    holder renews, and nothing once the holder acknowledged.

    The holder renews after each of the other consumer's polls, as a worker
    renews from a thread of its own: a poll that runs long (the first one
    connects, subscribes and parks the copy) delays no renewal by more than
    itself.  The other consumer is consuming before the drop, as a worker
    would be."""
    holder, other = pair
    held = held_past_its_lease(holder)
    assert other.reserve(["q"], 1, lease=LEASE, timeout=0) == []  # the holder's channel has it
    assert holder.extend([held], LEASE) == [True]
    holder._consumer.drop()  # the connection goes: RabbitMQ hands the message out again
    until = time.monotonic() + LEASE * 1.5
    while time.monotonic() < until:
        assert other.reserve(["q"], 1, lease=LEASE, timeout=0.05) == [], \
            "the redelivery ran while its holder lives"
        assert holder.extend([held], LEASE) == [True], "the side-store lease keeps it"
    assert holder.ack([held]) == [True]
    assert reserve_for(other, LEASE * 2) == [], "the parked copy came back after the ack"
    [stats] = other.stats(["q"])
    assert (stats.ready, stats.delayed, stats.inflight) == (0, 0, 0)


def test_a_parked_message_runs_once_its_holder_stops_renewing(
        pair: tuple[AMQPBroker, AMQPBroker]) -> None:
    holder, other = pair
    held_past_its_lease(holder)
    holder._consumer.drop()
    holder.close()  # the holder died: its running record lapses within a lease
    dropped_at = time.monotonic()
    [again] = reserve_for(other, LEASE * 4)
    assert time.monotonic() - dropped_at < LEASE * 3
    assert (again.id, again.deliveries) == ("long", 2)
    assert other.ack([again]) == [True]


def test_a_failed_send_gives_its_idempotency_key_back(tmp_path: Path,
                                                       amqp_quorum_url: str) -> None:
    """A send that raised did not happen: a retry with a new id must send, not be
    told the key belongs to the message that never reached RabbitMQ."""
    state = f"sqlite:///{tmp_path / 'keys.db'}"
    down = broker_from_url(f"amqp://u:pw@127.0.0.1:1//?state_url={state}&connect_timeout=1")
    up = broker_from_url(amqp_quorum_url.split("&state_url=")[0] + f"&state_url={state}")
    try:
        with pytest.raises(BrokerUnavailable) as refused:
            down.enqueue(Envelope(id="first", queue="q", body=b"x", idempotency_key="k"))
        assert "pw" not in str(refused.value)
        assert up.enqueue(Envelope(id="retry", queue="q", body=b"x",
                                   idempotency_key="k")) == "retry"
        assert [d.id for d in reserve_for(up, 5)] == ["retry"]
    finally:
        down.close()
        up.close()
