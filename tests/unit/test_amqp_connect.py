"""How a RabbitMQ connect that fails is reported: always ``BrokerUnavailable``."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from conveyor import _amqp
from conveyor._amqp_link import connect
from conveyor.exceptions import BrokerUnavailable


@pytest.fixture
def listening() -> Iterator[int]:
    """A loopback port whose connections complete (in the backlog) and are never answered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_a_connection_reset_as_it_opens_is_broker_unavailable(
        listening: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """pika checks a socket that has just connected with ``getpeername()``; when the
    peer reset it first (a proxy with no server behind it, the fault proxy's reset
    mode) that check fails and pika raises a ``ValueError``, which callers (the
    producer's ``.delay()``, the worker's backoff) would not take for an unreachable
    server.  The reset is simulated by the check failing as it then does."""
    def reset(sock: socket.socket) -> tuple[str, int]:
        raise OSError(errno.ENOTCONN, os.strerror(errno.ENOTCONN))

    o = _amqp.parse_amqp_url(f"amqp://me:s3cret@127.0.0.1:{listening}/v?connect_timeout=2",
                             {"state_url": "sqlite:///state.db"})
    monkeypatch.setattr(socket.socket, "getpeername", reset)
    with pytest.raises(BrokerUnavailable, match="reset as it connected") as refused:
        connect(o)
    assert o.place in str(refused.value) and "s3cret" not in str(refused.value)
