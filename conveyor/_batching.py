"""Many messages of one call shape, encoded from one template.

A group of 20,000 calls to one task, a chord header or ``app.send_many``
sends messages that differ only in their id, arguments, creation time and
index in their group.  Building and encoding each through
:meth:`Conveyor.build_message` and :meth:`Message.encode` repeats the
option handling, routing, priority, header and workflow encoding for every
one of them; a :class:`MessageBatch` does that once, from a prototype
message, and splices the per-call fields into the encoded prototype
(:class:`conveyor._message.BodyTemplate`): the same bytes, at a fraction of
the cost (docs/decisions/0021-batched-canvas-sending.md).

A batch is only used where the result is the message ``build_message``
would have made: when no ``before_task_publish`` / ``after_task_publish``
receiver is connected (they get a :class:`Message` per task, and may add
headers to it) and when the route cannot depend on a call's arguments.
A :class:`Prebuilt` can still become that :class:`Message`, for a receiver
connected between building and sending (a send deferred to a commit).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor import _publishing as publishing
from conveyor import _signing as signing
from conveyor._message import BodyTemplate, Message, new_id
from conveyor.brokers import Broker, Envelope

if TYPE_CHECKING:
    from conveyor.app import Conveyor


class Prebuilt:
    """One message of a batch, already encoded into its envelope."""

    __slots__ = ("args", "chord_index", "created", "envelope", "group_index", "id", "kwargs",
                 "template")

    def __init__(self, template: BodyTemplate, task_id: str, args: tuple[Any, ...],
                 kwargs: dict[str, Any], created: float, group_index: int | None,
                 chord_index: int | None, envelope: Envelope) -> None:
        self.template = template
        self.id = task_id
        self.args = args
        self.kwargs = kwargs
        self.created = created
        self.group_index = group_index
        self.chord_index = chord_index
        self.envelope = envelope

    def message(self) -> Message:
        """The :class:`Message` this envelope encodes (for publish signal receivers)."""
        prototype = self.template.prototype
        changes: dict[str, Any] = {"id": self.id, "args": self.args, "kwargs": self.kwargs,
                                   "created": self.created}
        if self.group_index is not None:
            changes["group_index"] = self.group_index
        if self.chord_index is not None and prototype.chord is not None:
            changes["chord"] = {**prototype.chord, "index": self.chord_index}
        return prototype.evolve(**changes)


class MessageBatch:
    """Envelopes for calls shaped like ``prototype``: same task, options and workflow."""

    def __init__(self, app: Conveyor, prototype: Message) -> None:
        self.template = BodyTemplate(prototype)
        self._key = signing.key_for(app.conf)
        self._limit = app.conf.task_message_max_bytes
        self._suffix = broker_id_suffix(prototype)
        self._queue = prototype.queue
        self._priority = app.broker_priority(prototype)
        self._eta = prototype.eta
        self._task = prototype.task

    def envelope(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 created: float, group_index: int | None = None,
                 chord_index: int | None = None) -> Envelope:
        """The envelope of one call; raises as :meth:`Conveyor.envelope` would."""
        body = self.body(task_id, args, kwargs, created, group_index, chord_index)
        return Envelope(task_id + self._suffix, self._queue, body, self._priority, self._eta)

    def body(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
             created: float, group_index: int | None = None,
             chord_index: int | None = None) -> bytes:
        """The envelope's body (signed, size checked)."""
        body = self.template.body(task_id, args, kwargs, created, group_index, chord_index)
        if self._key is not None:
            body = signing.sign(body, self._key)
        if self._limit is not None and len(body) > self._limit:
            from conveyor.app import _refuse_size

            _refuse_size(self._task, task_id, body, self._limit)
        return body

    def prebuilt(self, task_id: str, args: tuple[Any, ...], kwargs: dict[str, Any],
                 group_index: int | None, chord_index: int | None) -> Prebuilt:
        created = time.time()
        envelope = self.envelope(task_id, args, kwargs, created, group_index, chord_index)
        return Prebuilt(self.template, task_id, args, kwargs, created, group_index,
                        chord_index, envelope)


class PlainSends:
    """One task's calls without options (``.delay()``), sent from its batch template.

    Kept by the app per task, with the broker it was made for (a fork or a
    changed setting makes a new one).  When the broker has a :meth:`sender
    <conveyor.brokers.Broker.sender>` for the template's queue and priority,
    each call hands it the id and body alone: no :class:`Envelope`, and the
    broker's per-queue work done once.
    """

    __slots__ = ("_batch", "_broker", "_send")

    def __init__(self, batch: MessageBatch, broker: Broker) -> None:
        self._batch = batch
        self._broker = broker
        self._send = (broker.sender(batch._queue, batch._priority)
                      if batch._eta is None and not batch._suffix else None)

    def send(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        """Send one call: (the id made for it, the id the broker holds for it)."""
        task_id = new_id()
        batch = self._batch
        send = self._send
        if send is not None:
            return task_id, send(task_id, batch.body(task_id, args, kwargs, time.time()))
        return task_id, self._broker.enqueue(batch.envelope(task_id, args, kwargs,
                                                            time.time()))


def broker_id_suffix(message: Message) -> str:
    """What the broker's message id adds to the task id (``~n`` for retry ``n``)."""
    from conveyor.app import broker_message_id

    return broker_message_id(message)[len(message.id):]


def enqueue(app: Conveyor, items: Sequence[Message | Prebuilt]) -> None:
    """Send built and prebuilt messages in one broker batch, in their order.

    If a publish signal receiver is connected by now, prebuilt messages
    become :class:`Message` objects again and go the signalled way.
    """
    if all(type(item) is Message for item in items):
        app.enqueue(items)  # type: ignore[arg-type]  # checked just above
        return
    if publishing.watched():
        app.enqueue([item.message() if isinstance(item, Prebuilt) else item for item in items])
        return
    app.broker.enqueue_many([item.envelope if isinstance(item, Prebuilt) else app.envelope(item)
                             for item in items])


__all__ = ["MessageBatch", "PlainSends", "Prebuilt", "broker_id_suffix", "enqueue"]
