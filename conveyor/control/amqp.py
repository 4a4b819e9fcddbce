"""The control channel on RabbitMQ: a fanout exchange out, a queue per command back.

Topology (docs/decisions/0023-rabbitmq-control-exchange.md), in the broker's vhost:

``conveyor.control`` (fanout exchange, durable)
    Every command, as JSON (:class:`~conveyor.control.base.Command`).  A fanout
    copies each message into every bound queue, which is a broadcast; with no
    queue bound the message is dropped, which is what a command sent while no
    worker listens means (Celery's pidbox exchange is a fanout for the same reason).
``conveyor.control.<host>.<pid>.<random>`` (one queue per listener)
    Exclusive and auto-delete: RabbitMQ removes it with its connection, so a
    worker that is down holds no queue and no command waits for it.  Commands
    older than :data:`~conveyor.control.base.REPLY_TTL` expire unread
    (``x-message-ttl``): nobody waits for their answer any more.
``conveyor.control.reply.<command_id>`` (one queue per command that wants replies)
    JSON ``[node, reply]`` per answering worker, published to it through the
    default exchange.  Sender and repliers both declare it (same arguments), so
    no reply is lost whoever comes first; the sender deletes it when it stops
    waiting, and ``x-expires`` removes one recreated by a late reply.

Replies go to a named queue, not to RabbitMQ's direct reply-to pseudo-queue,
because a reply is addressed by command id alone (the protocol in ``base``)
and direct reply-to needs the sender's consumer to exist before the command
leaves; a named queue also keeps a reply that arrives first.

pika connections are not thread-safe: each listener has its own, and the
channel keeps one per thread (a web server's threads may each send commands).
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from conveyor import _amqp
from conveyor._amqp_link import LINK_ERRORS, connect
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

__all__ = ["AMQPChannel", "AMQPListener"]

T = TypeVar("T")
EXCHANGE = "conveyor.control"
REPLY_PREFIX = "conveyor.control.reply."
_TTL_MS = int(REPLY_TTL * 1000)
_FAILURES = (*LINK_ERRORS, pika.exceptions.ChannelClosedByBroker)


@contextlib.contextmanager
def _translated(place: str, doing: str) -> Iterator[None]:
    """pika's failures as :class:`BrokerUnavailable` (the worker's control thread
    reopens its listener on that, with backoff)."""
    try:
        yield
    except _FAILURES as exc:
        raise BrokerUnavailable(f"RabbitMQ at {place}: could not {doing} "
                                f"({type(exc).__name__})") from None


def _reply_queue(ch: BlockingChannel, command_id: str) -> str:
    name = REPLY_PREFIX + command_id
    ch.queue_declare(name, arguments={"x-expires": _TTL_MS})
    return name


class AMQPListener(Listener):
    """One worker's queue bound to the control exchange, on a connection of its own."""

    def __init__(self, opts: _amqp.AMQPOptions) -> None:
        self._place = opts.place
        self._got: list[bytes] = []
        self._conn = connect(opts)
        try:
            with _translated(self._place, "subscribe to control commands"):
                ch = self._conn.channel()
                ch.exchange_declare(EXCHANGE, "fanout", durable=True)
                name = f"{EXCHANGE}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
                ch.queue_declare(name, exclusive=True, auto_delete=True,
                                 arguments={"x-message-ttl": _TTL_MS})
                ch.queue_bind(name, EXCHANGE)  # bound before listen() returns: nothing missed
                ch.basic_consume(name, lambda _c, _m, _p, body: self._got.append(body),
                                 auto_ack=True)
        except BrokerUnavailable:
            self.close()
            raise

    def receive(self, timeout: float) -> list[Command]:
        deadline = time.monotonic() + timeout
        with _translated(self._place, "receive control commands"):
            self._conn.process_data_events(0)
            # Returns as soon as a delivery was dispatched, or at the time limit.
            while not self._got and (left := deadline - time.monotonic()) > 0:
                self._conn.process_data_events(time_limit=left)
        got, self._got = self._got, []
        return parse_commands(list(got))

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection may fail to close
            self._conn.close()


class AMQPChannel(ControlChannel):
    """Commands to the fanout exchange, replies through per-command queues."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        # The broker's URL and transport options, read as the broker reads them;
        # the side store (state_url) is the broker's business, not this channel's.
        self._opts = _amqp.parse_amqp_url(url, options, need_state=False)
        self._local = threading.local()
        self._opened: list[pika.BlockingConnection] = []
        self._lock = threading.Lock()

    def _chan(self) -> BlockingChannel:
        """This thread's channel, in confirm mode: a publish returns once RabbitMQ
        has it, and one into a dead connection fails instead of vanishing."""
        ch: BlockingChannel | None = getattr(self._local, "channel", None)
        if ch is not None and ch.is_open:
            return ch
        conn = connect(self._opts)
        with self._lock:
            self._opened.append(conn)
        ch = conn.channel()
        ch.confirm_delivery()
        ch.exchange_declare(EXCHANGE, "fanout", durable=True)
        self._local.channel = ch
        return ch

    def _forget(self) -> None:
        """Drop this thread's broken connection."""
        ch: BlockingChannel | None = getattr(self._local, "channel", None)
        self._local.channel = None
        if ch is None:
            return
        with self._lock:
            if ch.connection in self._opened:
                self._opened.remove(ch.connection)
        with contextlib.suppress(Exception):
            ch.connection.close()

    def _run(self, doing: str, op: Callable[[BlockingChannel], T]) -> T:
        """``op(channel)``, once more on a new connection when the old one had died
        (RabbitMQ closes an idle one whose heartbeats went unanswered)."""
        try:
            with _translated(self._opts.place, doing):
                return op(self._chan())
        except BrokerUnavailable:
            self._forget()
        with _translated(self._opts.place, doing):
            return op(self._chan())

    def publish(self, command: Command) -> None:
        self._run("publish a control command", lambda ch: ch.basic_publish(
            EXCHANGE, "", command.encode().encode(),
            pika.BasicProperties(content_type="application/json")))

    def listen(self) -> Listener:
        return AMQPListener(self._opts)

    def reply(self, command_id: str, node: str, body: Any) -> None:
        text = encode_reply(node, body).encode()

        def op(ch: BlockingChannel) -> None:
            ch.basic_publish("", _reply_queue(ch, command_id), text,
                             pika.BasicProperties(content_type="application/json"))
        self._run("reply to a control command", op)

    def replies(self, command_id: str, timeout: float,
                limit: int | None = None) -> Iterator[tuple[str, Any]]:
        got: collections.deque[bytes] = collections.deque()

        def start(ch: BlockingChannel) -> tuple[BlockingChannel, str, str]:
            queue = _reply_queue(ch, command_id)
            tag = ch.basic_consume(queue, lambda _c, _m, _p, body: got.append(body),
                                   auto_ack=True)
            return ch, queue, tag
        ch, queue, tag = self._run("read control replies", start)
        try:
            yield from self._collect(ch, got, time.monotonic() + timeout, limit)
        finally:
            with contextlib.suppress(Exception):  # the queue expires by itself anyway
                ch.basic_cancel(tag)
                ch.queue_delete(queue)

    def _collect(self, ch: BlockingChannel, got: collections.deque[bytes], deadline: float,
                 limit: int | None) -> Iterator[tuple[str, Any]]:
        count = 0
        while limit is None or count < limit:
            if got:
                count += 1
                yield decode_reply(got.popleft())
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with _translated(self._opts.place, "read control replies"):
                ch.connection.process_data_events(time_limit=remaining)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for conn in opened:
            with contextlib.suppress(Exception):
                conn.close()
        self._local = threading.local()
