"""The broker contract on RabbitMQ, with classic and with quorum queues.

Where RabbitMQ keeps a weaker rule, a flag says so and the test skips with the
reason (docs/decisions/0016-rabbitmq-broker.md).
"""

from __future__ import annotations

import pytest

from .broker_contract import BrokerContract


class TestRabbitMQClassicBroker(BrokerContract):
    stores_an_id_once = False
    knows_oldest_age = False

    @pytest.fixture
    def url(self, amqp_url: str) -> str:
        return amqp_url


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
