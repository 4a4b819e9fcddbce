"""Celery's ``before_task_publish`` / ``after_task_publish``, from Conveyor's messages.

Celery sends these with the AMQP publish arguments.  There is no exchange
or AMQP property here, so receivers get what Celery users read from them:

* ``sender``: the task name (a string, as in Celery).
* ``headers``: Celery's protocol-2 task headers (``id``, ``task``, ``eta``,
  ``expires``, ``retries``, ``root_id``, ``parent_id``, ``group``,
  ``group_index``, ``timelimit``, ``origin``) plus the message's own
  headers.  Keys a ``before_task_publish`` receiver *adds* travel with the
  message and reach ``self.request.headers`` in the worker (tracing
  integrations propagate context this way); changes to Celery's keys are
  not applied, since the message's fields are the source of truth.
* ``body``: Celery's protocol-2 body ``(args, kwargs, embed)``.
* ``routing_key``: the queue; ``exchange``: ``""`` (Celery's default
  exchange, which routes by queue name); ``declare``: ``[]``;
  ``properties``: ``correlation_id``, ``priority``, ``content_type``;
  ``retry_policy``: ``None`` (the broker connection retries by itself).

Nothing here runs unless a receiver is connected.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from conveyor import signals
from conveyor._message import Message
from conveyor._serialization import CONTENT_TYPES
from conveyor.brokers import Envelope

_CELERY_KEYS = frozenset({"lang", "task", "id", "shadow", "eta", "expires", "group",
                          "group_index", "retries", "timelimit", "root_id", "parent_id",
                          "argsrepr", "kwargsrepr", "origin", "ignore_result"})


def watched() -> bool:
    """Does any receiver listen to a publish signal?"""
    return bool(signals.before_task_publish.receivers or signals.after_task_publish.receivers)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, timezone.utc).isoformat()


def celery_headers(message: Message) -> dict[str, Any]:
    headers = dict(message.headers)
    headers.update({
        "lang": "py", "task": message.task, "id": message.id, "shadow": None,
        "eta": _iso(message.eta), "expires": _iso(message.expires),
        "group": message.group_id, "group_index": message.group_index,
        "retries": message.retries, "root_id": message.root_id or message.id,
        "parent_id": message.parent_id, "origin": f"{socket.gethostname()}",
        "timelimit": [message.headers.get("time_limit"),
                      message.headers.get("soft_time_limit")],
    })
    return headers


def _body(message: Message) -> tuple[Any, ...]:
    embed = {"callbacks": list(message.callbacks) or None,
             "errbacks": list(message.errbacks) or None,
             "chain": list(message.chain) or None, "chord": message.chord}
    return (list(message.args), dict(message.kwargs), embed)


def before(messages: Sequence[Message]) -> Sequence[Message]:
    """Send ``before_task_publish`` per message; returns them with added headers."""
    if not signals.before_task_publish.receivers:
        return messages
    return [_before_one(m) for m in messages]


def _before_one(message: Message) -> Message:
    headers = celery_headers(message)
    signals.before_task_publish.send(
        sender=message.task, body=_body(message), exchange="", routing_key=message.queue,
        headers=headers, declare=[], retry_policy=None,
        properties={"correlation_id": message.id, "priority": message.priority,
                    "content_type": message.content_type})
    added = {k: v for k, v in headers.items()
             if k not in _CELERY_KEYS and message.headers.get(k, headers) != v}
    return message.evolve(headers={**message.headers, **added}) if added else message


def after(messages: Sequence[Message]) -> None:
    """Send ``after_task_publish`` per message the broker took."""
    if not signals.after_task_publish.receivers:
        return
    for message in messages:
        signals.after_task_publish.send(sender=message.task, body=_body(message), exchange="",
                                        routing_key=message.queue,
                                        headers=celery_headers(message))


def after_envelopes(envelopes: Sequence[Envelope]) -> None:
    """``after`` for a bulk send, which kept only the encoded bodies."""
    if signals.after_task_publish.receivers:
        after([Message.decode(e.body, list(CONTENT_TYPES)) for e in envelopes])


__all__ = ["after", "after_envelopes", "before", "celery_headers", "watched"]
