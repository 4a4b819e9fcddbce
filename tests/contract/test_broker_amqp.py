"""The broker contract on RabbitMQ, with classic and with quorum queues.

Where RabbitMQ keeps a weaker rule, a flag says so and the test skips with the
reason (docs/decisions/0016-rabbitmq-broker.md).
"""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestRabbitMQClassicBroker(BrokerContract):
    """Classic queues with priorities: declared with ``x-max-priority`` 9, as an app
    with ``task_queue_max_priority = 9`` does (ADR 0041)."""

    stores_an_id_once = False
    knows_oldest_age = False

    @pytest.fixture
    def url(self, amqp_priority_url: str) -> str:
        return amqp_priority_url


class TestRabbitMQQuorumBroker(BrokerContract):
    stores_an_id_once = False
    knows_oldest_age = False
    has_priorities = False

    @pytest.fixture
    def url(self, amqp_quorum_url: str) -> str:
        return amqp_quorum_url


# -- RabbitMQ's own hot paths ----------------------------------------------------------
@pytest.mark.parametrize("acked", [["a", "b"], ["b", "c"]])
def test_acking_part_of_a_batch_leaves_the_rest_held(amqp_url: str, acked: list[str]) -> None:
    """Acks of several deliveries go out as one ``multiple`` frame only when no
    lower tag is still held; either way, what was not acked comes back once the
    connection closes, and what was acked does not."""
    from conveyor.brokers import Envelope, broker_from_url

    broker = broker_from_url(amqp_url)
    broker.enqueue_many([Envelope(id=i, queue="batch", body=i.encode()) for i in "abc"])
    got: list = []
    while len(got) < 3:
        got += broker.reserve(["batch"], 3 - len(got), lease=60, timeout=5)
    by_id = {d.id: d for d in got}
    assert broker.ack([by_id[i] for i in acked]) == [True, True]
    broker.close()
    again = broker_from_url(amqp_url)
    try:
        back = again.reserve(["batch"], 3, lease=60, timeout=5)
        back += again.reserve(["batch"], 3, lease=60, timeout=0.5)
        assert sorted(d.id for d in back) == sorted(set("abc") - set(acked))
        assert again.ack(back) == [True]
    finally:
        again.close()


def test_a_batch_of_publishes_reports_the_unroutable_one(amqp_url: str) -> None:
    """``Confirms`` waits once for a batch and raises pika's ``UnroutableError`` for
    a message no queue took (``mandatory``); the channel goes on confirming."""
    import pika
    import pika.exceptions

    from conveyor._amqp_confirms import Confirms
    from conveyor.brokers import broker_from_url

    broker = broker_from_url(amqp_url)
    try:
        with broker._side_channel() as ch:
            ch.queue_declare("confirmed", durable=True)
            confirms = Confirms.of(ch)
            for key in ("confirmed", "nowhere", "confirmed"):
                confirms.publish("", key, b"x", pika.BasicProperties(message_id=key))
            with pytest.raises(pika.exceptions.UnroutableError) as refused:
                confirms.wait()
            assert [m.properties.message_id for m in refused.value.messages] == ["nowhere"]
            confirms.publish("", "confirmed", b"y", pika.BasicProperties())
            confirms.wait()
            assert ch.queue_purge("confirmed").method.message_count == 3
    finally:
        broker.close()


def test_the_consuming_connection_s_heartbeat_follows_the_lease(amqp_url: str) -> None:
    """Half the lease (ADR 0034): RabbitMQ hands a stopped worker's messages on
    within about a lease.  A heartbeat in the options wins."""
    from conveyor.brokers import broker_from_url

    broker = broker_from_url(amqp_url)
    try:
        broker.stats(["beat"])  # opens the consuming link before any lease is known
        broker.reserve(["beat"], 1, lease=6, timeout=0)
        assert broker._consumer.conn._impl.params.heartbeat == 3
    finally:
        broker.close()
    explicit = broker_from_url(amqp_url + "&heartbeat=11")
    try:
        explicit.reserve(["beat"], 1, lease=6, timeout=0)
        assert explicit._consumer.conn._impl.params.heartbeat == 11
    finally:
        explicit.close()


@pytest.mark.parametrize("stood_in", [True, False])
def test_a_delivery_whose_connection_went_is_settled_through_its_running_record(
        amqp_quorum_url: str, stood_in: bool) -> None:
    """A child whose connection RabbitMQ closed (it held the GIL past two
    heartbeats) acknowledges through the running record its supervisor held in
    its name: the copy handed out is dropped.  Without that record the ack is
    refused and the copy runs, counted (at least once)."""
    from conveyor.brokers import Envelope, broker_from_url

    holder = broker_from_url(amqp_quorum_url)
    other = broker_from_url(amqp_quorum_url + "&redelivery_wait=0.2")
    try:
        holder.enqueue(Envelope(id="m", queue="gone", body=b"x"))
        [held] = holder.reserve(["gone"], 1, lease=4, timeout=5)
        if stood_in:  # what the prefork supervisor's extend does for its child
            assert holder._guards.stand_in(held, 4)
        holder._consumer.conn.close()  # RabbitMQ hands the message out again
        assert other.reserve(["gone"], 1, lease=4, timeout=0.1) == []  # held back
        assert holder.ack([held]) == [stood_in]
        copies = other.reserve(["gone"], 1, lease=4, timeout=1.5)
        if stood_in:
            assert copies == []
            assert other.lease_holder("conveyor.settled:m") is not None
        else:
            assert [(d.id, d.deliveries) for d in copies] == [("m", 2)]
            assert other.ack(copies) == [True]
    finally:
        holder.close()
        other.close()
