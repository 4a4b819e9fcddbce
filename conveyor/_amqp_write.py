"""Writing a few small frames (acknowledgements) without a turn of pika's I/O loop.

``BlockingChannel._flush_output`` runs pika's loop until the output buffer is
empty: it registers the socket for writing, polls, sends, unregisters, and
reads and decodes whatever arrived meanwhile (the deliveries each ack lets
RabbitMQ push).  After every task that was about a fifth of a prefork
child's CPU on RabbitMQ (docs/performance.md, round two, fourth pass).  An
acknowledgement is some 20 bytes that the socket takes at once, so this
sends the buffered bytes with pika's own writer (its accounting and its
handling of a failed send unchanged) and leaves the reading to the next
reserve or renewal, which polls anyway and then reads several deliveries in
one go.  The ack is on the wire when :func:`write_out` returns, as before.

Whatever the short path cannot finish -- a TLS transport, a socket buffer that
took only part, a send that failed and aborted the transport -- goes through
pika's flush, which sends the rest or raises the connection's error.
"""

from __future__ import annotations

from pika.adapters.blocking_connection import BlockingChannel
from pika.adapters.utils.io_services_utils import _AsyncPlaintextTransport


def write_out(ch: BlockingChannel) -> None:
    """Send what ``ch``'s connection has buffered; pika's flush when that falls short."""
    transport = getattr(ch.connection._impl, "_transport", None)
    if isinstance(transport, _AsyncPlaintextTransport) and _active(transport):
        if transport.get_write_buffer_size():
            transport._on_socket_writable()  # pika's writer: sends, or aborts on error
        if _active(transport) and not transport.get_write_buffer_size():
            return
    ch._flush_output()


def _active(transport: _AsyncPlaintextTransport) -> bool:
    return bool(transport._state == transport._STATE_ACTIVE)
