"""Sends Celery's task signals from the worker, with Celery's senders and arguments.

The executor calls these at Celery's moments (see ``celery/app/trace.py`` and
``celery/worker/request.py``); each returns at once when nothing listens,
so the execute path pays one attribute test per signal and nothing more.
Arguments are built only for a signal that has receivers.

Senders: the task object for ``task_prerun``/``postrun``/``success``/
``failure``/``retry``/``revoked``/``internal_error`` (its name when the
worker does not know the task); the executor (which has ``app`` and
``hostname``, as Celery's consumer does) for ``task_received``,
``task_rejected`` and ``task_unknown``.
"""

from __future__ import annotations

import logging
import reprlib
import signal as os_signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from conveyor import signals
from conveyor._context import Request, pop_request, push_request
from conveyor.einfo import ExceptionInfo
from conveyor.exceptions import Ignore, Reject, Retry, TaskRevokedError

if TYPE_CHECKING:
    from conveyor._message import Message
    from conveyor.app import Conveyor
    from conveyor.brokers.base import Delivery
    from conveyor.task import Task
    from conveyor.worker.execute import Executor, Outcome


def _task_of(app: Conveyor, name: str) -> Any:
    """The sender for a task signal: the registered task, else its name."""
    task = app.tasks.get(name)
    return task if task is not None else name


# Celery's per-task lines at INFO ("Task x[id] received", "... succeeded in 0.01s: 5"),
# which operators read all day; nothing is formatted when INFO is off (-l WARNING).
log = logging.getLogger("conveyor.worker")
_SHOWN_RESULT = 200  # characters of a result's repr in the "succeeded" line


def _shown(value: Any) -> str:
    text = reprlib.repr(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= _SHOWN_RESULT else text[:_SHOWN_RESULT] + "..."


def received(executor: Executor, message: Message, delivery: Delivery) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("Task %s[%s] received", message.task, message.id)
    if signals.task_received.receivers:
        request = Request.from_message(message, delivery, executor.hostname)
        signals.task_received.send(sender=executor, request=request)


def rejected(executor: Executor, delivery: Delivery, exc: BaseException | None,
             outcome: Outcome) -> Outcome:
    """A body that is no task message (undecodable, refused); returns ``outcome``."""
    if signals.task_rejected.receivers:
        signals.task_rejected.send(sender=executor, message=delivery, exc=exc)
    return outcome


def unknown(executor: Executor, message: Message, exc: BaseException) -> None:
    if signals.task_unknown.receivers:
        signals.task_unknown.send(sender=executor, message=message, exc=exc,
                                  name=message.task, id=message.id)


def revoked(app: Conveyor, message: Message, request: Request, *, expired: bool = False,
            terminated: bool = False, signum: int | None = None) -> None:
    if signals.task_revoked.receivers:
        signals.task_revoked.send(sender=_task_of(app, message.task), request=request,
                                  terminated=terminated, signum=signum, expired=expired)


@contextmanager
def _running(request: Request) -> Iterator[None]:
    """``task.request`` is the run's during task signals, as in Celery's tracer."""
    token = push_request(request)
    try:
        yield
    finally:
        pop_request(token)


def prerun(task: Task, request: Request) -> None:
    """Before the run (and its STARTED record)."""
    if signals.task_prerun.receivers:
        with _running(request):
            signals.task_prerun.send(sender=task, task_id=request.id, task=task,
                                     args=request.args, kwargs=request.kwargs)


def postrun(task: Task, request: Request, retval: Any, outcome: Outcome) -> Outcome:
    """After the run and its records, whatever happened; returns ``outcome``."""
    if signals.task_postrun.receivers:
        state = outcome.state or _quiet_state(retval)
        with _running(request):
            signals.task_postrun.send(sender=task, task_id=request.id, task=task,
                                      args=request.args, kwargs=request.kwargs,
                                      retval=retval, state=state)
    return outcome


def _quiet_state(retval: Any) -> str | None:
    """Celery's state names for runs that end with no stored state."""
    if isinstance(retval, Ignore):
        return "IGNORED"
    if isinstance(retval, Reject):
        return "REJECTED"
    return None


def succeeded(task: Task, request: Request, result: Any, runtime: float | None = None) -> None:
    """``task_success``; receivers read the id as Celery's do, ``sender.request.id``."""
    if log.isEnabledFor(logging.INFO):
        log.info("Task %s[%s] succeeded in %.3fs: %s", task.name, request.id, runtime or 0.0,
                 _shown(result))
    if signals.task_success.receivers:
        with _running(request):
            signals.task_success.send(sender=task, result=result)


def retried(task: Task, request: Request, reason: Retry) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info("Task %s[%s] retry: %s", task.name, request.id, reason)
    if signals.task_retry.receivers:
        with _running(request):
            signals.task_retry.send(sender=task, request=request, reason=reason,
                                    einfo=ExceptionInfo(reason))


def failed(task: Any, request: Request, exc: BaseException, trace: str | None = None) -> None:
    """``task_failure``; ``task`` may be a name when the worker lacks the task."""
    if signals.task_failure.receivers:
        with _running(request):
            signals.task_failure.send(sender=task, task_id=request.id, exception=exc,
                                      args=request.args, kwargs=request.kwargs,
                                      traceback=exc.__traceback__,
                                      einfo=ExceptionInfo(exc, trace))


def killed(app: Conveyor, message: Message, request: Request, exc: BaseException) -> None:
    """The supervisor killed the run: terminated by revoke, or past its hard limit."""
    if isinstance(exc, TaskRevokedError):
        revoked(app, message, request, terminated=True, signum=int(os_signal.SIGKILL))
    else:
        failed(_task_of(app, message.task), request, exc)


def lost(app: Conveyor, message: Message, request: Request, exc: BaseException) -> None:
    """Given up after its worker died too often (a FAILURE record was written)."""
    failed(_task_of(app, message.task), request, exc)


def internal_error(executor: Executor, delivery: Delivery, exc: BaseException) -> None:
    """An error in the worker (or a hook) around the task, not in the task's body."""
    if not signals.task_internal_error.receivers:
        return
    from conveyor._message import Message

    try:
        message = Message.decode(delivery.body, executor.accept)
    except Exception:
        return  # not a task message: task_rejected covers those
    request = Request.from_message(message, delivery, executor.hostname)
    signals.task_internal_error.send(
        sender=_task_of(executor.app, message.task), task_id=message.id, args=message.args,
        kwargs=message.kwargs, request=request, exception=exc, traceback=exc.__traceback__,
        einfo=ExceptionInfo(exc, internal=True))


__all__ = ["failed", "internal_error", "killed", "lost", "postrun", "prerun", "received",
           "rejected", "retried", "revoked", "succeeded", "unknown"]
