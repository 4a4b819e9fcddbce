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
