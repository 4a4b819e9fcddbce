"""Eager mode: running tasks and canvases in the calling process, for tests.

``Task.apply()`` always runs here; with ``task_always_eager`` so do
``.delay()``, ``.apply_async()`` and canvases' ``.apply_async()``.  A run
follows the worker's path as closely as one process allows:

* the call is built and encoded exactly as for the broker (serializer,
  ``accept_content``, ``task_message_max_bytes``, argument checks), then
  decoded, and the task gets the decoded arguments: a test cannot pass with
  an argument that production would refuse (Celery's eager mode skips this);
* the return value is encoded as the result store would (a value the store
  would refuse fails the run) and handed back decoded, as ``get()`` would;
* ``self.request`` is populated (``is_eager=True``), the task class's hooks
  run at the worker's moments (:mod:`conveyor._hooks`), a retry runs the next
  attempt at once, ``link`` callbacks and ``link_error`` errbacks follow
  inline, and chains, groups and chords run in order;
* with ``task_store_eager_result`` the outcome is written to the result store.

The result is an :class:`EagerResult`, which holds the outcome and never
waits.  ``task_eager_propagates`` (or ``apply(throw=True)``) re-raises a
task's error from the call, after its hooks and errbacks ran.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import socket
import threading
import time
import traceback as tb
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

from conveyor import _hooks as hooks
from conveyor import signals, states
from conveyor._context import Request, pop_request, push_request
from conveyor._message import Message
from conveyor._typing import R
from conveyor.canvas import Canvas, Signature, chain, chord, group
from conveyor.exceptions import (
    Ignore,
    MaxRetriesExceededError,
    Reject,
    ResultTooLarge,
    Retry,
    SerializationError,
    TaskRevokedError,
    TimeoutError,
)
from conveyor.result import AsyncResult, GroupResult
from conveyor.resultstores.record import ResultRecord
from conveyor.worker import announce

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

log = logging.getLogger("conveyor.eager")

IGNORED = "IGNORED"  # Celery's names for runs that end without a stored state
REJECTED = "REJECTED"


class EagerResult(AsyncResult[R]):
    """The outcome of a task run in this process: Celery's ``EagerResult``.

    Everything is known once the run is over, so nothing here reads the
    result store or waits.  ``get()`` returns the value (decoded, as a
    worker's result would be) or raises the task's own exception.
    """

    def __init__(self, id: str, app: Conveyor, task_name: str | None = None,
                 parent: AsyncResult | GroupResult | None = None) -> None:
        super().__init__(id, app=app, task_name=task_name, parent=parent)
        self.settle(states.PENDING, None, None)

    def settle(self, state: str, value: Any, traceback: str | None, retries: int = 0) -> None:
        """Record the run's outcome (the runner calls this; so may ``revoke``)."""
        self._state, self._value, self._traceback = state, value, traceback
        done = time.time() if state in states.READY_STATES else None
        self._cache = ResultRecord(task_id=self.id, state=state, traceback=traceback,
                                   task=self.task_name, retries=retries, date_done=done)

    def __repr__(self) -> str:
        return f"<EagerResult {self.id} {self._state}>"

    @property
    def state(self) -> str:
        return self._state

    status = state

    @property
    def info(self) -> Any:
        return self._value

    result = info

    @property
    def traceback(self) -> str | None:
        return self._traceback

    def ready(self) -> bool:
        return self._state != states.PENDING

    @overload
    def get(self, timeout: float | None = None, propagate: Literal[True] = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True, **kwargs: Any) -> R: ...
    @overload
    def get(self, timeout: float | None = None, *, propagate: bool, interval: float = 0.5,
            disable_sync_subtasks: bool = True, **kwargs: Any) -> R | BaseException: ...
    @overload
    def get(self, timeout: float | None, propagate: bool, interval: float = 0.5,
            disable_sync_subtasks: bool = True, **kwargs: Any) -> R | BaseException: ...

    def get(self, timeout: float | None = None, propagate: bool = True,
            interval: float = 0.5, disable_sync_subtasks: bool = True, **kwargs: Any) -> Any:
        """The value; for a failure, raise it (or return it with ``propagate=False``).

        Never blocks, so unlike ``AsyncResult.get`` it may be called inside
        a task (Celery's ``EagerResult`` behaves the same).
        """
        if self._state == states.SUCCESS:
            return self._value
        if self._state == states.PENDING:
            raise TimeoutError(f"task {self.id} has not run: it runs when the open database "
                               "transaction commits")
        if self._state in states.PROPAGATE_STATES and propagate:
            if isinstance(self._value, BaseException):
                raise self._value
            raise TaskRevokedError(f"task {self.id} was revoked")
        return self._value

    wait = get

    def forget(self) -> None:
        """Nothing to forget: the outcome lives in this object."""

    def revoke(self, terminate: bool = False, signal: str | None = None) -> None:
        """The run is over; mark it REVOKED as Celery's ``EagerResult`` does."""
        self.settle(states.REVOKED, None, self._traceback)


Outcome = AsyncResult | GroupResult
"""What running a canvas node gives: one task's result (an EagerResult) or a group's."""


@dataclass
class EagerRequest(Request):
    """A request run in this process; ``retry()`` leaves the next attempt here."""

    next_attempt: Message | None = None


# -- one task ---------------------------------------------------------------------

def apply(task: Task, args: Any = None, kwargs: Any = None, **options: Any) -> EagerResult:
    """Run ``task`` here as a worker would (see the module docstring).

    ``options`` are ``apply_async``'s, plus ``throw`` (default:
    ``task_eager_propagates``).  With ``on_commit`` the run waits for the
    caller's open database transaction to commit, as sending would.
    """
    app = task.app
    throw = options.pop("throw", None)
    on_commit = options.pop("on_commit", None)
    message = travelled(app, app.build_message(task.name, args, kwargs, _task=task, **options))
    propagate = app.conf.task_eager_propagates if throw is None else bool(throw)
    result = EagerResult(message.id, app, task.name)

    def run() -> None:
        _attempts(app, task, message, propagate, result)

    if on_commit and signals.defer_until_commit(run):
        return result
    run()
    return result


def travelled(app: Conveyor, message: Message) -> Message:
    """``message`` after the trip a broker would give it: encoded, checked, decoded."""
    body = app.envelope(message).body
    return Message.decode(body, app.conf.accept_content)


def plan_retry(app: Conveyor, request: Request, args: Any, kwargs: Any,
               options: dict[str, Any]) -> None:
    """``retry()`` in eager mode: the next attempt, run once this one ends."""
    assert isinstance(request, EagerRequest) and request.message is not None
    original = request.message
    request.next_attempt = travelled(app, original.evolve(
        retries=original.retries + 1,
        args=tuple(args) if args is not None else original.args,
        kwargs=dict(kwargs) if kwargs is not None else original.kwargs,
        created=time.time(),
    ))


def _attempts(app: Conveyor, task: Task, message: Message, propagate: bool,
              result: EagerResult) -> None:
    """Run attempts until one does not ask for another (retries run at once)."""
    attempt: Message | None = message
    while attempt is not None:
        request = EagerRequest.from_message(attempt, None, socket.gethostname())
        request.is_eager = True
        request.delivery_info["is_eager"] = True
        _trace(app, task, request, propagate, result)
        attempt = request.next_attempt


def _trace(app: Conveyor, task: Task, request: EagerRequest, propagate: bool,
           result: EagerResult) -> None:
    """One attempt, with the signals Celery's tracer sends for eager runs too."""
    token = push_request(request)
    announce.prerun(task, request)
    try:
        _attempt(app, task, request, propagate, result)
    finally:
        _postrun(task, request, result)
        pop_request(token)


def _attempt(app: Conveyor, task: Task, request: EagerRequest, propagate: bool,
             result: EagerResult) -> None:
    try:
        hooks.before_start(task, request)
        retval = _call(task, request)
    except Retry as exc:
        hooks.retried(task, request, exc)
        announce.retried(task, request, exc)
        result.settle(states.RETRY, exc.exc, None, request.retries)
        return
    except Ignore as exc:
        result.settle(IGNORED, exc, None, request.retries)
        return
    except Reject as exc:
        result.settle(REJECTED, exc, None, request.retries)
        return
    except Exception as exc:
        if not _autoretried(task, request, exc, result):
            _fail(app, task, request, exc, tb.format_exc(), propagate, result)
        return
    _succeed(app, task, request, retval, propagate, result)


def _postrun(task: Task, request: EagerRequest, result: EagerResult) -> None:
    from conveyor.worker.execute import ACK, Outcome

    if result.state == states.PENDING:  # the attempt raised out (task_eager_propagates)
        return
    announce.postrun(task, request, result.result, Outcome(ACK, state=result.state))


def _call(task: Task, request: Request) -> Any:
    value = task(*request.args, **request.kwargs)
    if not asyncio.iscoroutine(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(value)
    return _run_elsewhere(value)  # called from async code: its loop is busy waiting on us


def _run_elsewhere(coroutine: Any) -> Any:
    """Run a coroutine to the end on a loop of its own, in a helper thread."""
    context = contextvars.copy_context()  # the task's request goes along
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = context.run(asyncio.run, coroutine)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="conveyor-eager-async")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _autoretried(task: Task, request: EagerRequest, exc: Exception,
                 result: EagerResult) -> bool:
    """``autoretry_for``: retry as the worker does; False when it does not apply."""
    opts = task.options
    if not opts.autoretry_for or not isinstance(exc, opts.autoretry_for):
        return False
    if opts.dont_autoretry_for and isinstance(exc, opts.dont_autoretry_for):
        return False
    try:
        task.retry(exc=exc, **opts.retry_kwargs)
    except Retry as again:
        hooks.retried(task, request, again)
        announce.retried(task, request, again)
        result.settle(states.RETRY, exc, None, request.retries)
        return True
    except Exception:
        return False  # retries used up: the original error stands
    return False


def _ignores_result(task: Task, request: Request) -> bool:
    per_call = request.headers.get("ignore_result")
    return bool(task.ignore_result if per_call is None else per_call)


def _succeed(app: Conveyor, task: Task, request: EagerRequest, retval: Any, propagate: bool,
             result: EagerResult) -> None:
    value = retval
    if not _ignores_result(task, request):
        record = app.record_for(request, states.SUCCESS, result=retval)
        try:  # what the store would hold, whether or not it is written
            payload = record.encode(app.conf.result_max_bytes, app.conf.result_warn_bytes)
        except (ResultTooLarge, SerializationError) as exc:
            _fail(app, task, request, exc, tb.format_exc(), propagate, result)
            return
        value = ResultRecord.decode(payload).result
        if task.store_eager_result:
            app.write_record(record)
    result.settle(states.SUCCESS, value, None, request.retries)
    assert request.message is not None
    for callback in request.message.callbacks:
        apply_canvas(app, Canvas.from_dict(callback, app), (value,), {})
    hooks.succeeded(task, request, retval)
    announce.succeeded(task, request, retval)


def _fail(app: Conveyor, task: Task, request: EagerRequest, exc: BaseException, trace: str,
          propagate: bool, result: EagerResult) -> None:
    if isinstance(exc, MaxRetriesExceededError) and exc.__context__ is not None:
        exc = exc.__context__
    log.warning("task %s[%s] failed: %r", task.name, request.id, exc,
                extra={"task_name": task.name, "task_id": request.id})
    if task.store_eager_result and not _ignores_result(task, request):
        app.store_state(request, states.FAILURE, exc=exc, traceback=trace)
    result.settle(states.FAILURE, exc, trace, request.retries)
    assert request.message is not None and request.id is not None
    run_errbacks(app, request.message.errbacks, request, exc, trace)
    hooks.failed(task, request, exc, trace)
    announce.failed(task, request, exc, trace)
    if propagate:
        raise exc


def run_errbacks(app: Conveyor, errbacks: Sequence[dict[str, Any]], request: Request,
                 exc: BaseException | None, traceback: str | None) -> None:
    """Run ``link_error`` errbacks here, in Celery's two styles (:mod:`conveyor._errbacks`):
    ``errback(request, exc, traceback)`` for the current style, else with the task id."""
    from conveyor import _errbacks as styles

    inline, old_style = styles.split_styles(app, errbacks)
    if exc is not None:
        styles.call_inline(inline, request, exc, traceback)
    for errback in old_style:
        apply_canvas(app, Canvas.from_dict(errback, app), (request.id,), {})


def _errbacks_for(app: Conveyor, errbacks: Sequence[dict[str, Any]],
                  failed: EagerResult) -> None:
    """A workflow's errbacks, for its first failed member ``failed``."""
    exc = failed.result if isinstance(failed.result, BaseException) else None
    request = Request(id=failed.id, task=failed.task_name, root_id=failed.id,
                      called_directly=False, is_eager=True)
    run_errbacks(app, errbacks, request, exc, failed.traceback)


# -- canvases ---------------------------------------------------------------------

def apply_canvas(app: Conveyor, node: Canvas, args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None) -> Outcome:
    """Run a canvas here, in order, as the workflow would across workers.

    A chain passes each value on; a group runs each member; a chord runs
    its body with the header's values.  A failure ends the workflow as in
    production: the steps after it fail with its error (they do not run),
    and the errbacks run once.
    """
    return _run(app, node.freeze(), tuple(args), dict(kwargs or {}))


def _run(app: Conveyor, node: Canvas, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Outcome:
    if isinstance(node, Signature):
        call_args, call_kwargs = node.partial(args, kwargs)
        task = app.get_task(node.task)
        options = {k: v for k, v in node.options.items() if k not in ("chain", "chord")}
        return task.apply(call_args, call_kwargs, **options)
    if isinstance(node, chain):
        return _run_chain(app, node, args, kwargs)
    if isinstance(node, chord):
        return _run_chord(app, node, args, kwargs)
    if isinstance(node, group):
        return _run_group(app, node, args, kwargs)
    return _run(app, node.freeze(), args, kwargs)


def _run_chain(app: Conveyor, node: chain, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Outcome:
    previous: Outcome | None = None
    for index, step in enumerate(node.tasks):
        if previous is None:
            outcome = _run(app, step, args, kwargs)
        else:
            outcome = _run(app, step, (value_of(previous),), {})
            outcome.parent = previous
        failure = failure_of(outcome)
        if failure is not None:
            return _failed_steps(app, node.tasks[index + 1:], outcome, failure)
        if not finished(outcome):
            return outcome  # ignored or rejected: the chain stops here, as with a worker
        previous = outcome
    assert previous is not None, "a frozen chain has steps"
    return previous


def _run_group(app: Conveyor, node: group, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> GroupResult:
    members = [_run(app, member, args, kwargs) for member in node.tasks]
    outcome = GroupResult(str(node.id), members, app)
    failed = first_failed(outcome)
    if failed is not None and node.options.get("link_error"):
        _errbacks_for(app, node.options["link_error"], failed)
    return outcome


def _run_chord(app: Conveyor, node: chord, args: tuple[Any, ...],
               kwargs: dict[str, Any]) -> Outcome:
    from conveyor._workflow import entry_errbacks

    assert node.body is not None, "a frozen chord has a body"
    header = _run_group(app, node.header, args, kwargs)
    failed = first_failed(header)
    if failed is not None:
        errbacks = [e for e in entry_errbacks(node.body)
                    if e not in (node.header.options.get("link_error") or ())]
        _errbacks_for(app, errbacks, failed)
        return _failed_steps(app, [node.body], header, failure_of(failed))
    if not all(finished(member) for member in header.results):
        return _unrun(app, node.body, header)  # a worker would never fire this body
    outcome = _run(app, node.body, ([value_of(r) for r in header.results],), {})
    outcome.parent = header
    return outcome


def _failed_steps(app: Conveyor, steps: Sequence[Canvas], parent: Outcome,
                  exc: BaseException | None) -> Outcome:
    """Results for steps that will not run because ``parent`` failed with ``exc``."""
    last = parent
    for step in steps:
        last = _stand_in(app, step, last, states.FAILURE, exc)
    return last


def _unrun(app: Conveyor, node: Canvas, parent: Outcome) -> Outcome:
    return _stand_in(app, node, parent, states.PENDING, None)


def _stand_in(app: Conveyor, node: Canvas, parent: Outcome, state: str,
              exc: BaseException | None) -> Outcome:
    """An outcome with ``node``'s ids, in ``state``, for a node that did not run."""
    from conveyor._workflow import FINAL, result_of

    handle = result_of(app, node, None, FINAL)
    return _settled_like(app, handle, parent, state, exc)


def _settled_like(app: Conveyor, handle: AsyncResult | GroupResult, parent: Outcome | None,
                  state: str, exc: BaseException | None) -> Outcome:
    if isinstance(handle, GroupResult):
        members = [_settled_like(app, m, None, state, exc) for m in handle.results]
        return GroupResult(handle.id, members, app, parent=parent)
    outcome = EagerResult(handle.id, app, handle.task_name, parent=parent)
    outcome.settle(state, exc, None)
    return outcome


def value_of(outcome: Outcome) -> Any:
    """What the next step receives: a task's value, or a group's values as a list."""
    if isinstance(outcome, GroupResult):
        return [value_of(member) for member in outcome.results]
    return outcome.result


def first_failed(outcome: Outcome) -> EagerResult | None:
    if isinstance(outcome, GroupResult):
        for member in outcome.results:
            found = first_failed(member)
            if found is not None:
                return found
        return None
    if isinstance(outcome, EagerResult) and outcome.state in states.PROPAGATE_STATES:
        return outcome
    return None


def failure_of(outcome: Outcome | None) -> BaseException | None:
    """The error that ended ``outcome``'s run (a group's first), or None."""
    failed = first_failed(outcome) if outcome is not None else None
    if failed is None:
        return None
    value = failed.result
    return value if isinstance(value, BaseException) else TaskRevokedError(
        f"task {failed.id} was revoked")


def finished(outcome: Outcome) -> bool:
    """Whether ``outcome`` ran to a value (every member, for a group)."""
    if isinstance(outcome, GroupResult):
        return all(finished(member) for member in outcome.results)
    return outcome.state == states.SUCCESS


__all__ = ["EagerRequest", "EagerResult", "apply", "apply_canvas", "plan_retry", "travelled"]
