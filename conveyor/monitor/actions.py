"""What the monitor can change: retry, revoke, terminate, dead-letter replay and discard.

Every action names the user who took it in the task's timeline, so the
detail page answers "who revoked this?".  Actions go through the same public
calls a program would use (``send_task``, ``revoke``, the broker's
dead-letter operations); the monitor has no back door.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor import _redact as redact
from conveyor._events import EventStore, TimelineEvent
from conveyor.exceptions import ConveyorError
from conveyor.monitor.tasks import decode

if TYPE_CHECKING:
    from conveyor.app import Conveyor

ACTION = "ACTION"


class ActionError(ConveyorError):
    """An action that cannot be done as asked (the message says why)."""


def _note(store: EventStore, task_id: str, detail: str) -> None:
    store.add_events([TimelineEvent(task_id, time.time(), ACTION, detail)])


def retry(app: Conveyor, store: EventStore, task_id: str, user: str) -> str:
    """Send the task again with the same arguments, as a new task; returns its id."""
    record = decode(app.backend.get(task_id))
    if record is None or not record.task:
        raise ActionError(f"task {task_id} has no stored name and arguments to retry with "
                          "(its result expired, or it never ran)")
    if any(isinstance(found, str) or _masked(found) for found in (record.args, record.kwargs)):
        raise ActionError(f"task {task_id}'s arguments were stored redacted (its redact option "
                          "or argsrepr/kwargsrepr), so the monitor cannot send them again; "
                          "send the task again from your code")
    args = record.args if isinstance(record.args, list) else []
    kwargs = record.kwargs if isinstance(record.kwargs, dict) else {}
    result = app.send_task(record.task, args, kwargs, queue=record.queue or None)
    _note(store, task_id, f"retried by {user} as {result.id}")
    _note(store, result.id, f"sent by {user} as a retry of {task_id}")
    return result.id


def _masked(found: Any) -> bool:
    """Is a value masked by a task's ``redact`` option anywhere in ``found``?"""
    if isinstance(found, dict):
        return any(_masked(v) for v in found.values())
    if isinstance(found, list):
        return any(_masked(v) for v in found)
    return found == redact.MASK


def revoke(app: Conveyor, store: EventStore, task_id: str, user: str,
           terminate: bool = False) -> None:
    """Revoke: a queued task is skipped; with ``terminate`` a running one is killed."""
    app.revoke(task_id, terminate=terminate)
    _note(store, task_id, f"{'terminated' if terminate else 'revoked'} by {user}")


def replay_dead(app: Conveyor, store: EventStore, queue: str, ids: Sequence[str] | None,
                user: str) -> int:
    """Put dead letters back on their queue (all of ``queue`` when ``ids`` is None)."""
    replayed = app.broker.replay_dead(queue, list(ids) if ids is not None else None)
    for message_id in ids or []:
        _note(store, message_id.split("~", 1)[0], f"replayed from dead letters by {user}")
    return replayed


def discard_dead(app: Conveyor, store: EventStore, queue: str, ids: Sequence[str] | None,
                 user: str) -> int:
    """Delete dead letters for good."""
    discarded = app.broker.discard_dead(queue, list(ids) if ids is not None else None)
    for message_id in ids or []:
        _note(store, message_id.split("~", 1)[0], f"dead letter discarded by {user}")
    return discarded
