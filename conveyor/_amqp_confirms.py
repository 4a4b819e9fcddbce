"""Publisher confirms counted by delivery tag, so a batch waits once.

pika's ``BlockingChannel.confirm_delivery`` makes every ``basic_publish`` wait
for its own confirm: N messages cost N round trips to RabbitMQ (and, for a
persistent message, N disk syncs it may not group).  This tracker puts the
channel in confirm mode itself and counts: each publish takes the next
delivery tag, each ``basic.ack`` (or ``nack``) settles its tag, or every tag
up to it when ``multiple`` is set.  ``wait`` returns once every tag sent so far
is acknowledged, so a batch's publishes are all on the wire before the first
confirm is awaited; the guarantee is the same as one at a time (nothing
returns before RabbitMQ has taken every message), only the waiting is shared.

A ``basic.return`` (``mandatory`` and no queue bound) or a ``nack`` fails the
wait with pika's own :class:`~pika.exceptions.UnroutableError` or
:class:`~pika.exceptions.NackError`, as ``BlockingChannel`` does.
"""

from __future__ import annotations

import weakref
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, ReturnedMessage


class Confirms:
    """The confirm state of one channel; get it with :meth:`of`."""

    _all: weakref.WeakKeyDictionary[BlockingChannel, Confirms] = weakref.WeakKeyDictionary()

    def __init__(self, channel: BlockingChannel) -> None:
        self._channel = channel
        self._sent = 0  # the last delivery tag handed out (RabbitMQ counts from 1)
        self._waiting: set[int] = set()
        self._nacked = 0
        self._returned: list[ReturnedMessage] = []
        impl = channel._impl
        selected: list[bool] = []
        impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                              callback=lambda _frame: selected.append(True))
        impl.add_on_return_callback(self._on_return)
        channel._flush_output(lambda: bool(selected))

    @classmethod
    def of(cls, channel: BlockingChannel) -> Confirms:
        """The tracker of ``channel``, turning confirm mode on the first time."""
        tracker = cls._all.get(channel)
        if tracker is None:
            tracker = cls._all[channel] = cls(channel)
        return tracker

    def publish(self, exchange: str, key: str, body: bytes,
                properties: pika.BasicProperties) -> None:
        """Send one mandatory publish without waiting for its confirm."""
        self._channel._impl.basic_publish(exchange, key, body, properties, mandatory=True)
        self._sent += 1
        self._waiting.add(self._sent)

    def wait(self) -> None:
        """Until RabbitMQ confirmed every publish so far; raise if it refused one."""
        if self._waiting:
            self._channel._flush_output(lambda: not self._waiting)
        if self._waiting:  # the channel closed under the wait: a link error
            raise pika.exceptions.ChannelWrongStateError("channel closed before the confirms")
        returned, self._returned = self._returned, []
        nacked, self._nacked = self._nacked, 0
        if nacked:
            raise pika.exceptions.NackError(returned)
        if returned:
            raise pika.exceptions.UnroutableError(returned)

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        if method.multiple:
            self._waiting = {tag for tag in self._waiting if tag > method.delivery_tag}
        else:
            self._waiting.discard(method.delivery_tag)
        if isinstance(method, pika.spec.Basic.Nack):
            self._nacked += 1

    def _on_return(self, _channel: Any, method: pika.spec.Basic.Return,
                   properties: pika.BasicProperties, body: bytes) -> None:
        self._returned.append(ReturnedMessage(method, properties, body))
