"""A worker's own copy of the revoked task ids, fed by a RabbitMQ stream.

Checking every leased message against the side store (``state_url``) cost a
round trip per batch: 0.4-1.8 ms of the RabbitMQ round trip (issue 20).  A
consuming process keeps the revoked ids in memory instead, read from the
durable stream ``conveyor.revocations`` (docs/decisions/0028-rabbitmq-revocation-stream.md):

* ``revoke`` writes the side store first (exact answers for ``revoked()``, and
  for a process whose copy is not complete yet), then appends one record to
  the stream and waits for the publisher confirm.
* A consuming process reads the stream from its first record (so a task
  revoked before the process started is known), then keeps reading it: the
  stream is at once the durable log and the live feed, in one order, so
  there is no gap between a "sync" and a "subscription" to close.
* Until the copy is complete, a lease carries no flag and the worker asks
  the side store, as before.  Complete means: this process appended a marker
  record after subscribing, and has read up to it; every revocation confirmed
  before the marker lies before it in the stream.

A revocation confirmed while a worker is already running reaches it within
the stream's delivery time (well under a millisecond on a local node); a
message leased in that window runs, as on Celery, whose revoke is a
broadcast.  The stream keeps records for ``revocations_kept`` seconds (its
``x-max-age``); a revocation meant to last longer is still in the side store
(``revoked()`` reports it) but a process started after that age no longer
learns of it from the stream.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

STREAM = "conveyor.revocations"
_MARKER = "x-conveyor-marker"
_PREFETCH = 1000  # stream records in flight to one consumer
_SEGMENT_BYTES = 1 << 20  # retention drops whole segments: keep them small
QUIET = 0.2  # seconds a new subscription waits for a newer record before adding one
_log = logging.getLogger("conveyor.brokers.amqp")


def stream_arguments(kept: float) -> dict[str, Any]:
    """The stream's declaration: retention by age, in small segments."""
    return {"x-queue-type": "stream", "x-max-age": f"{max(1, round(kept))}s",
            "x-stream-max-segment-size-bytes": _SEGMENT_BYTES}


def ensure_stream(conn: BlockingConnection, kept: float) -> str | None:
    """Make sure the stream exists (declared with ``kept`` by whoever comes first;
    an existing one is used whatever its retention, which a policy may change);
    ``None``, or why it cannot be used (RabbitMQ before 3.9, a refused declaration).
    Each step on a channel of its own: a refusal closes the channel it came on."""
    probe = conn.channel()
    try:
        probe.queue_declare(STREAM, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        pass
    else:
        probe.close()
        return None
    ch = conn.channel()
    try:
        ch.queue_declare(STREAM, durable=True, arguments=stream_arguments(kept))
    except pika.exceptions.ChannelClosedByBroker as exc:
        return str(exc.reply_text)
    ch.close()
    return None


def record(ids: list[str], ttl: float, terminate: bool) -> tuple[bytes, pika.BasicProperties]:
    """One revocation as a stream record: the ids, and until when they hold."""
    body = json.dumps({"ids": ids, "terminate": terminate,
                       "until": round((time.time() + ttl) * 1000)}).encode()
    return body, pika.BasicProperties(delivery_mode=2, content_type="application/json")


def marker() -> pika.BasicProperties:
    """An empty record, appended by a process whose subscription saw nothing
    newer arrive: it marks a point after the subscription began."""
    return pika.BasicProperties(delivery_mode=2, headers={_MARKER: os.getpid()})


@dataclass
class Feed:
    """This process's revoked ids (task id -> until, Unix seconds), and its
    subscription to the stream on the consuming connection.

    The subscription is two consumers: one reads from the first record (or the
    one after the last read, on a new connection), the other from the next
    record appended.  The second one's first record is the *boundary*: it was
    appended after the subscription began, so every revocation confirmed
    before then lies before it, and the copy is complete once the first
    consumer reaches it.  Any record will do (another process's revocation or
    marker); if none comes within ``QUIET`` seconds, this process appends a
    marker, so that a busy vhost's process starts add few records."""

    kept: float  # the stream's retention when this process declares it
    revoked: dict[str, float] = field(default_factory=dict)
    complete: bool = False
    _generation: int = -1  # the consuming connection subscribed on
    _since: float = 0.0  # monotonic: when the subscription began
    _marked: bool = False  # this subscription appended its marker
    _boundary: int | None = None
    _offset: int | None = None  # the last record read: a resubscription starts after it
    _pruned_at: int = 0
    _refused: str | None = None

    def flag(self, task_id: str) -> bool | None:
        """Whether ``task_id`` is revoked, or ``None`` while the copy is incomplete."""
        if not self.complete:
            return None
        until = self.revoked.get(task_id)
        return until is not None and until > time.time()

    def subscribe(self, conn: BlockingConnection, generation: int) -> None:
        """Subscribe on ``conn``, once per connection."""
        if generation == self._generation:
            return
        self._generation, self.complete, self._boundary = generation, False, None
        refused = ensure_stream(conn, self.kept)
        if refused is not None:
            if refused != self._refused:
                _log.warning("revocations: the stream %s cannot be used (%s); each leased "
                             "message is checked in the side store instead", STREAM, refused)
            self._refused = refused
            return
        ch = conn.channel()
        ch.add_on_cancel_callback(lambda _frame: self.forget_connection(restart=True))
        ch.basic_qos(prefetch_count=_PREFETCH)
        start: Any = "first" if self._offset is None else self._offset + 1
        ch.basic_consume(STREAM, self._on_record, arguments={"x-stream-offset": start})
        ch.basic_consume(STREAM, self._on_boundary, arguments={"x-stream-offset": "next"})
        self._since, self._marked = time.monotonic(), False

    def marker_due(self) -> bool:
        """Whether this process should append a marker now (at most once per
        subscription; the caller publishes it on the publishing link)."""
        return (self._generation >= 0 and not self.complete and self._boundary is None
                and not self._marked and time.monotonic() - self._since >= QUIET)

    def marked(self) -> None:
        self._marked = True

    def forget_connection(self, restart: bool = False) -> None:
        """The consuming connection broke, or RabbitMQ cancelled the subscription
        (``restart``: the stream was deleted, so read the next one from its start).
        The ids read so far stay."""
        self._generation, self.complete = -1, False
        if restart:
            self._offset = None

    def _on_record(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties,
                   body: bytes) -> None:
        headers = props.headers or {}
        offset = headers.get("x-stream-offset")
        if isinstance(offset, int):
            self._offset = offset
        if _MARKER not in headers:
            self._add(body)
        self._credit(ch, method)
        self._check()

    def _on_boundary(self, ch: BlockingChannel, method: Any, props: pika.BasicProperties,
                     _body: bytes) -> None:
        offset = (props.headers or {}).get("x-stream-offset")
        if self._boundary is None and isinstance(offset, int):
            self._boundary = offset
        self._credit(ch, method)
        self._check()

    def _check(self) -> None:
        if self._boundary is not None and self._offset is not None \
                and self._offset >= self._boundary:
            self.complete = True

    @staticmethod
    def _credit(ch: BlockingChannel, method: Any) -> None:
        """Acks are a stream's credit; buffered, they leave with the next I/O."""
        ch._impl.basic_ack(method.delivery_tag)

    def _add(self, body: bytes) -> None:
        try:
            doc = json.loads(body)
            until = float(doc["until"]) / 1000
            ids = [str(i) for i in doc["ids"]]
        except (ValueError, KeyError, TypeError):
            _log.warning("revocations: skipping a record that is not a revocation: %r",
                         body[:200])
            return
        if until <= time.time():
            return
        for task_id in ids:
            if self.revoked.get(task_id, 0.0) < until:
                self.revoked[task_id] = until
        if len(self.revoked) >= 2 * self._pruned_at + 1024:
            now = time.time()
            self.revoked = {k: v for k, v in self.revoked.items() if v > now}
            self._pruned_at = len(self.revoked)
