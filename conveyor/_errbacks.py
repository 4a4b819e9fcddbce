"""Errbacks in Celery's two calling styles.

Celery decides per errback by the errback task's own signature: a function
that takes more than one positional argument (or ``*args``) is the current
style and is *called in the worker*, right after the failure, as
``errback(request, exc, traceback)`` (its own arguments after those, or
only its own if the signature is immutable); its return value is not
stored and an exception from it is logged.  Any other errback (one
argument, a bound task, an ``async def`` task, a composition, or a task this
worker does not have) is the old style and is *sent* as a task with the
failed task's id.  Conveyor keeps that rule (Celery: backends/base.py
``Backend._call_task_errbacks``; ``traceback`` is the formatted text, as
Celery's ``ExceptionInfo.traceback``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from conveyor.canvas import Canvas, Signature

if TYPE_CHECKING:
    from conveyor._context import Request
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.errbacks")


def split_styles(app: Conveyor, errbacks: Sequence[dict[str, Any]]
                 ) -> tuple[list[tuple[Signature, Task]], list[dict[str, Any]]]:
    """(errbacks to call here with their task, errbacks to send with the task id)."""
    inline: list[tuple[Signature, Task]] = []
    sent: list[dict[str, Any]] = []
    for data in errbacks:
        task = _inline_task(app, data)
        if task is None:
            sent.append(data)
        else:
            sig = Canvas.from_dict(data, app)
            assert isinstance(sig, Signature)
            inline.append((sig, task))
    return inline, sent


def call_inline(errbacks: Sequence[tuple[Signature, Task]], request: Request,
                exc: BaseException, traceback: str | None) -> None:
    """Call current-style errbacks here; one that raises is logged, the rest still run."""
    for sig, task in errbacks:
        args, kwargs = sig.partial((request, exc, traceback), {})
        try:
            task(*args, **kwargs)
        except Exception:
            log.exception("errback %s raised for task %s", sig.task, request.id,
                          extra={"task_id": request.id})


def _inline_task(app: Conveyor, data: dict[str, Any]) -> Task | None:
    """The errback's task when Celery would call it in the worker, else None."""
    if data.get("subtask_type") is not None:
        return None
    task = app.tasks.get(str(data.get("task")))
    if task is None or getattr(task.options, "bind", False):
        return None
    fn = getattr(task, "fn", None)
    if fn is None or inspect.iscoroutinefunction(fn):
        return None
    return task if takes_more_than_one_positional(fn) else None


def takes_more_than_one_positional(fn: Any) -> bool:
    """Celery's ``arity_greater(fn, 1)``: ``*args``, or over one positional parameter."""
    try:
        spec = inspect.getfullargspec(fn)
    except TypeError:
        return False
    return bool(spec.varargs) or len(spec.args) > 1
