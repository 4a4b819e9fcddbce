"""The control channel on the broker's Redis server: pub/sub out, lists back.

Key layout (``P`` is the broker's key prefix, ``?prefix=``, default ``conveyor``):

``P:control`` (pub/sub channel)
    Every command, as JSON (:class:`~conveyor.control.base.Command`).  Each
    worker's control thread holds one subscription; pub/sub is a broadcast
    that only reaches current subscribers, which is the meaning a command has
    (Celery's Redis transport uses pub/sub for its fanout the same way).
``P:control:reply:{command_id}`` (list)
    JSON ``[node, reply]`` per answering worker (RPUSH); the sender BLPOPs it
    until its timeout.  Expires :data:`~conveyor.control.base.REPLY_TTL`
    seconds after the last reply, so an answer nobody waits for is not kept.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from conveyor._redis import ClientHolder, as_text, call, parse_redis_url, translate_errors
from conveyor._redis_options import connection_options
from conveyor.control.base import (
    REPLY_TTL,
    Command,
    ControlChannel,
    Listener,
    decode_reply,
    encode_reply,
    parse_commands,
)
from conveyor.exceptions import BrokerUnavailable

MAX_BLOCK = 1.0  # longest single blocking read; bounded by the socket timeout too


class RedisListener(Listener):
    def __init__(self, holder: ClientHolder, channel: str, address: str) -> None:
        self._address = address
        self._pubsub = holder.client.pubsub(ignore_subscribe_messages=False)
        with translate_errors(address, "subscribe to control commands", BrokerUnavailable,
                              changes_nothing=True):
            self._pubsub.subscribe(channel)
            # Wait for the confirmation: commands published after listen() returns are seen.
            self._pubsub.get_message(timeout=holder.options.socket_timeout)
        self._block = min(MAX_BLOCK, holder.options.socket_timeout / 2)

    def receive(self, timeout: float) -> list[Command]:
        out: list[Command] = []
        deadline = time.monotonic() + timeout
        with translate_errors(self._address, "receive control commands", BrokerUnavailable,
                              changes_nothing=True):
            while True:
                wait = 0.0 if out else min(self._block, max(0.0, deadline - time.monotonic()))
                message = self._pubsub.get_message(timeout=wait)
                if message is None:
                    if out or time.monotonic() >= deadline:
                        return out
                    continue
                if message.get("type") == "message":
                    out.extend(parse_commands([as_text(message["data"])]))

    def close(self) -> None:
        self._pubsub.close()


class RedisChannel(ControlChannel):
    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        # The broker's connection options and prefix, read as the broker reads them.
        self._options = parse_redis_url(url, connection_options(options or {}))
        self._holder = ClientHolder(self._options)
        self._channel = f"{self._options.prefix}:control"
        self._block = min(MAX_BLOCK, self._options.socket_timeout / 2)

    def _reply_key(self, command_id: str) -> str:
        return f"{self._channel}:reply:{command_id}"

    def publish(self, command: Command) -> None:
        with translate_errors(self._options.address, "publish a control command",
                              BrokerUnavailable):
            call(self._holder.client, "PUBLISH", self._channel, command.encode())

    def listen(self) -> Listener:
        return RedisListener(self._holder, self._channel, self._options.address)

    def reply(self, command_id: str, node: str, body: Any) -> None:
        key = self._reply_key(command_id)
        with translate_errors(self._options.address, "reply to a control command",
                              BrokerUnavailable):
            pipe = self._holder.client.pipeline(transaction=True)
            pipe.rpush(key, encode_reply(node, body))
            pipe.expire(key, int(REPLY_TTL))
            pipe.execute()

    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        key = self._reply_key(command_id)
        deadline = time.monotonic() + timeout
        count = 0
        while limit is None or count < limit:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with translate_errors(self._options.address, "read control replies",
                                  BrokerUnavailable, changes_nothing=True):
                got = call(self._holder.client, "BLPOP", key,
                           f"{max(0.01, min(self._block, remaining)):.3f}")
            if got:
                count += 1
                yield decode_reply(got[1])

    def close(self) -> None:
        self._holder.close()
