"""A published message leaves Conveyor's RabbitMQ connection in one socket write
(conveyor/_amqp_onewrite.py), and arrives exactly as pika would have sent it."""

from __future__ import annotations

from collections.abc import Iterator

import pika
import pytest

from conveyor import _amqp
from conveyor._amqp_link import connect
from conveyor._amqp_onewrite import OneWriteConnection

# A queue of this connection alone, gone with it: no other test sees it.
QUEUE = "conveyor-test-one-write"


@pytest.fixture
def channel(amqp_url: str) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    o = _amqp.parse_amqp_url(amqp_url, {})
    conn = connect(o)
    try:
        ch = conn.channel()
        ch.queue_declare(QUEUE, exclusive=True)
        yield ch
    finally:
        conn.close()


def _writes(ch: pika.adapters.blocking_connection.BlockingChannel,
            monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of what each call hands pika's transport, from now on."""
    impl = ch.connection._impl
    sizes: list[int] = []
    emit = impl._adapter_emit_data

    def counted(data: bytes) -> None:
        sizes.append(len(data))
        emit(data)

    monkeypatch.setattr(impl, "_adapter_emit_data", counted)
    return sizes


@pytest.mark.parametrize("size", [0, 100, 300_000])
def test_a_publish_is_one_write_and_arrives_whole(
        channel: pika.adapters.blocking_connection.BlockingChannel,
        monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    """Empty, small, and larger than a frame (RabbitMQ's frame_max is 128 KiB: the
    body goes as several body frames): one write each time, frames and counters
    as pika's own, the message intact at the other end."""
    assert isinstance(channel.connection._impl, OneWriteConnection)
    body = bytes(i % 251 for i in range(size))
    frames_before = channel.connection._impl.frames_sent
    sizes = _writes(channel, monkeypatch)
    channel.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2))
    body_frames = -(-size // channel.connection._impl._body_max_length)
    assert len(sizes) == 1, f"the publish went out in {len(sizes)} writes"
    assert channel.connection._impl.frames_sent - frames_before == 2 + body_frames
    got = None
    for _ in range(50):  # the publish is asynchronous: poll until it is queued
        got = channel.basic_get(QUEUE, auto_ack=True)
        if got[0] is not None:
            break
        channel.connection.sleep(0.05)
    assert got is not None and got[0] is not None, "the message never reached the queue"
    assert got[1].delivery_mode == 2
    assert got[2] == body
