"""The control-channel contract on RabbitMQ (a fanout exchange, a reply queue per command)."""

from __future__ import annotations

import socket

import pytest

from conveyor.control.amqp import AMQPChannel
from conveyor.control.base import Command, ControlChannel

from .control_channel_contract import ControlChannelContract


class TestRabbitMQControlChannel(ControlChannelContract):
    @pytest.fixture
    def url(self, amqp_url: str) -> str:
        return amqp_url

    def test_a_connection_that_died_while_idle_is_replaced_on_next_use(
            self, channel: ControlChannel) -> None:
        """RabbitMQ drops a client whose heartbeats went unanswered (a web process
        idle between commands); the next command must still leave, not vanish."""
        assert isinstance(channel, AMQPChannel)
        listener = channel.listen()
        channel.publish(Command("ping"))
        assert [c.name for c in listener.receive(2.0)] == ["ping"]
        link = channel._chan().connection
        link._impl._transport._sock.shutdown(socket.SHUT_RDWR)  # the link breaks under it
        channel.publish(Command("stats"))
        assert [c.name for c in listener.receive(2.0)] == ["stats"]
        assert channel._chan().connection is not link
        listener.close()
