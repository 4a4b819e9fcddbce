"""A pika connection that hands a published message to its socket in one write.

pika marshals a ``basic.publish`` into at least three frames (the method, the
content header, the body) and queues each as its own buffer; its transport
then sends them with one ``send`` apiece.  With ``TCP_NODELAY`` (pika sets it)
each lands in its own TCP segment, so RabbitMQ may wake for the method frame,
read it, and wake again for the header and the body: on a confirmed publish,
where the sender waits for every message's round trip, those extra wake-ups
and system calls are paid on the path a ``delay()`` waits on.

:class:`OneWriteConnection` joins the frames of one message before they reach
the transport.  The bytes on the wire, their order, and pika's counters are
exactly what they would be otherwise; only the number of writes changes.  It
overrides one private method of pika's ``Connection``
(``_output_marshaled_frames``), whose name and contract have been stable since
pika 1.0; ``tests/integration/test_rabbitmq_one_write.py`` fails if that changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from pika.adapters.select_connection import SelectConnection


class OneWriteConnection(SelectConnection):
    """pika's ``SelectConnection`` (what ``BlockingConnection`` drives), sending
    each group of marshalled frames as one buffer."""

    def _output_marshaled_frames(self, marshaled_frames: Sequence[bytes]) -> None:
        if len(marshaled_frames) < 2:
            super()._output_marshaled_frames(marshaled_frames)
            return
        data = b"".join(marshaled_frames)
        self.bytes_sent += len(data)
        self.frames_sent += len(marshaled_frames)
        self._adapter_emit_data(data)
