"""``Task.replace``: a running task hands its place in the workflow to a canvas.

As Celery's (``celery/app/task.py`` ``Task.replace``), the replacement
inherits everything that waited for the task: its ``link`` callbacks and
``link_error`` errbacks, the rest of its chain, its chord (or group) slot,
and its task id, which the replacement's final result is stored under, so
an ``AsyncResult`` held for the task resolves to the replacement's value.
A group replacement is collected into one value (a list), as Celery's
``celery.accumulate`` does.

The replacement is sent like any follow-up (:func:`conveyor._workflow.launch`)
with ids derived from the task's id, so a redelivered task that replaces
itself again sends messages the broker already holds.  The replacement's
final message keeps the task's id; its broker id carries the replacement
depth (``<id>~r<n>``, see :func:`conveyor.app.broker_message_id`) so it never
collides with the message still leased by the task being replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conveyor.canvas import (
    COLLECT_TASK,
    Canvas,
    Signature,
    chain,
    chord,
    chunks,
    group,
    seeded_ids,
)
from conveyor.exceptions import ConfigurationError, Ignore

if TYPE_CHECKING:
    from conveyor._message import Message
    from conveyor.task import Task

NESTING = "replaced_task_nesting"  # message header: how many replacements deep


def replace(task: Task, sig: Canvas) -> Any:
    """Send ``sig`` in the running task's place and stop the task (raises ``Ignore``)."""
    if "chord" in sig.options:
        raise ConfigurationError("a signature replacing a task must not be part of a chord")
    if isinstance(sig, chain) and not sig.tasks:
        raise ConfigurationError("cannot replace a task with an empty chain")
    request = task.request
    if request.is_eager:
        from conveyor import _eager as eager

        return eager.apply_canvas(task.app, sig).get()
    message = request.message
    if message is None:  # called directly: nothing waits for this call (as Celery)
        sig.apply_async()
        raise Ignore(f"replaced by {sig!r}")
    _send(task, sig, message)
    raise Ignore(f"replaced by {sig!r}")


def _send(task: Task, sig: Canvas, message: Message) -> None:
    from conveyor._workflow import Plan, launch

    app = task.app
    nesting = int(message.headers.get(NESTING) or 0) + 1
    node = _taking_over(sig, message, nesting)
    frozen = node.freeze(seeded_ids(f"{message.id}:replaced:{nesting}"))
    plan = Plan(app, root_id=message.root_id or message.id, parent_id=message.id)
    launch(plan, frozen, (), {}, tuple(message.chain), message.chord)
    plan.commit()


def _taking_over(sig: Canvas, message: Message, nesting: int) -> Canvas:
    """``sig`` carrying the task's callbacks and errbacks, its final call in the task's place."""
    node = sig.group() if isinstance(sig, chunks) else sig
    if isinstance(node, group):
        node = chord(node, Signature(COLLECT_TASK, app=node._app), app=node._app)
    if message.callbacks:  # (copies: the caller's signature is left as it was)
        node = node.copy_with(link=[*(node.options.get("link") or ()), *message.callbacks])
    if message.errbacks:
        node = node.copy_with(link_error=[*(node.options.get("link_error") or ()),
                                          *message.errbacks])
    return _final_call(node._named(message.id), message, nesting)


def _final_call(node: Canvas, message: Message, nesting: int) -> Canvas:
    """``node`` with its final call marked: the task's group slot and the depth header.

    The final call is built by a worker later (after the chain steps before
    it), so the marks travel as the call's own options.
    """
    if isinstance(node, chain):
        *first, last = node.tasks
        return chain(*first, _final_call(last, message, nesting), options=node.options,
                     app=node._app)
    if isinstance(node, chord) and node.body is not None:
        return chord(node.header, _final_call(node.body, message, nesting), node.options,
                     node._app)
    headers = {**(node.options.get("headers") or {}), NESTING: nesting}
    slot = {"group_id": message.group_id, "group_index": message.group_index}
    return node.copy_with(headers=headers, **{k: v for k, v in slot.items() if v is not None})


__all__ = ["replace"]
