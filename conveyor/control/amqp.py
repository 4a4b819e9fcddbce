"""Remote control beside a RabbitMQ broker: through its side store.

RabbitMQ keeps no records, so commands and replies go through the store
named by the broker's ``state_url`` (the result backend), as beat and
events do (ADR 0016).
"""

from __future__ import annotations

from typing import Any

from conveyor.control.base import ControlChannel, channel_for

__all__ = ["side_store_channel"]


def side_store_channel(url: str, options: dict[str, Any]) -> ControlChannel:
    """The channel of the side store; refused when there is none."""
    from conveyor._amqp import not_in_rabbitmq

    state = options.get("state_url")
    if not state:
        raise not_in_rabbitmq("remote control's replies")
    return channel_for(str(state))
