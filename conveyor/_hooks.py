"""Calling a task class's hooks at Celery's moments, with Celery's arguments.

Celery's tracer (``celery/app/trace.py``) calls, around one run of a task:

* ``before_start(task_id, args, kwargs)`` just before the body, inside the
  run: what it raises ends the run as the body raising would (so a hook may
  ``raise Reject`` or ``Ignore``);
* ``on_success(retval, task_id, args, kwargs)`` once the result is stored and
  the follow-ups (callbacks, next chain step) are sent;
* ``on_failure(exc, task_id, args, kwargs, einfo)`` once the failure is stored
  and the errbacks are sent;
* ``on_retry(exc, task_id, args, kwargs, einfo)`` once the next attempt is
  scheduled; ``exc`` is the error given to ``retry()``, ``einfo`` describes
  the ``Retry`` itself;
* ``after_return(status, retval, task_id, args, kwargs, einfo)`` after
  ``on_success``/``on_failure`` (never for a retry, a rejection or an ignored
  run); ``retval`` is the exception for a failure.

The worker and eager mode both call these functions, so the hooks behave
the same in tests and in production.  Apart from ``before_start``, a hook
that raises is logged and skipped: the task's result is already stored and
its message is acknowledged as if the hook had returned.  Every hook runs
with the task's request current, so ``self.request`` works inside it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from conveyor import states
from conveyor._context import pop_request, push_request
from conveyor.einfo import ExceptionInfo

if TYPE_CHECKING:
    from conveyor._context import Request
    from conveyor.exceptions import Retry
    from conveyor.task import Task

log = logging.getLogger("conveyor.worker")


def overrides(task: Task, hook: str) -> bool:
    """Whether the task's class defines ``hook`` (the base's is a no-op; skip the call)."""
    from conveyor.task import Task

    return getattr(type(task), hook, None) is not getattr(Task, hook)


def before_start(task: Task, request: Request) -> None:
    """Inside the run, just before the body; what it raises is the run's outcome."""
    if overrides(task, "before_start"):
        task.before_start(str(request.id), request.args, request.kwargs)


def succeeded(task: Task, request: Request, retval: Any) -> None:
    """``on_success`` then ``after_return(SUCCESS, ...)``."""
    if overrides(task, "on_success"):
        _call(task, request, "on_success", retval, request.id, request.args, request.kwargs)
    if overrides(task, "after_return"):
        _call(task, request, "after_return", states.SUCCESS, retval, request.id,
              request.args, request.kwargs, None)


def failed(task: Task, request: Request, exc: BaseException, trace: str | None) -> None:
    """``on_failure`` then ``after_return(FAILURE, exc, ...)``, both given ``einfo``.

    Celery's tracer passes ``None`` as ``after_return``'s ``einfo``; here it
    gets the same :class:`ExceptionInfo` as ``on_failure`` (code written for
    Celery's ``None`` still works; see docs/migrating-from-celery.md).
    """
    if not (overrides(task, "on_failure") or overrides(task, "after_return")):
        return
    einfo = ExceptionInfo(exc, trace)
    if overrides(task, "on_failure"):
        _call(task, request, "on_failure", exc, request.id, request.args, request.kwargs, einfo)
    if overrides(task, "after_return"):
        _call(task, request, "after_return", states.FAILURE, exc, request.id, request.args,
              request.kwargs, einfo)


def retried(task: Task, request: Request, reason: Retry) -> None:
    """``on_retry(reason.exc, ...)`` with the ``Retry`` described by ``einfo``."""
    if overrides(task, "on_retry"):
        _call(task, request, "on_retry", reason.exc, request.id, request.args, request.kwargs,
              ExceptionInfo(reason))


def _call(task: Task, request: Request, hook: str, *args: Any) -> None:
    token = push_request(request)
    try:
        getattr(task, hook)(*args)
    except Exception:
        log.exception("task %s[%s]: %s() raised; the task's outcome stands", task.name,
                      request.id, hook, extra={"task_name": task.name, "task_id": request.id})
    finally:
        pop_request(token)


__all__ = ["before_start", "failed", "overrides", "retried", "succeeded"]
