"""A ``django.tasks`` backend: ``@task`` functions run on Conveyor workers.

    TASKS = {
        "default": {
            "BACKEND": "conveyor.contrib.django.tasks.ConveyorBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"APP": "proj.conveyor:app"},   # optional; else the project's app
        }
    }

The API is Django 6's (``django.tasks``); on Django 5.2 the ``django-tasks``
package provides it.  Each ``enqueue`` sends one Conveyor message for the
generic task :data:`RUNNER`, whose single argument says which function to
run (by import path) with which arguments; the worker imports the function,
calls it (``async def`` functions too) and fires ``task_started`` and
``task_finished``; the caller fires ``task_enqueued``.  So any worker that
serves the queue runs Django tasks beside Conveyor's own, with Conveyor's
delivery guarantees, and results come from the app's result store.

* ``queue_name`` is the Conveyor queue; ``run_after`` becomes the message's
  ETA (it waits in the broker); ``priority`` (-100..100, higher first, 0 the
  default) maps onto Conveyor's 0..9 (lower first, as Celery on Redis)
  keeping its order, with 0 meaning the app's default.
* ``get_result`` works from any process: the id is the Conveyor task id.
  ``enqueue`` writes a PENDING record first, so a queued task answers READY
  rather than "does not exist".
* With ``task_enqueue_on_commit = True`` an ``enqueue`` inside ``atomic``
  is sent when the transaction commits (and ``task_enqueued`` fires then).

This module is also the app's ``tasks`` module, so worker autodiscovery
registers :data:`RUNNER`; it imports without django-tasks installed.
"""

from __future__ import annotations

import importlib
import json
import math
import time
import traceback
from datetime import datetime
from datetime import timezone as dt_timezone
from types import ModuleType
from typing import TYPE_CHECKING, Any

from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import import_string

from conveyor import signals, states
from conveyor._config import load_object
from conveyor.app import shared_task
from conveyor.contrib.django._time import to_db
from conveyor.resultstores.record import ResultRecord

if TYPE_CHECKING:
    from conveyor._context import Request
    from conveyor.app import Conveyor

#: The Conveyor task that runs every Django task.
RUNNER = "conveyor.contrib.django.tasks.run"


def _first_module(*names: str) -> ModuleType | None:
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


# Django 6 first; the backport for Django 5.2.
_package = "django.tasks" if _first_module("django.tasks") else "django_tasks"
_api = _first_module(_package)  # task_backends
_core = _first_module(f"{_package}.base")  # Task, TaskResult, TaskContext, TaskError, ...
_base = _first_module(f"{_package}.backends.base")
_exceptions = _first_module(f"{_package}.exceptions")
_signals = _first_module(f"{_package}.signals")
_BaseBackend: Any = _base.BaseTaskBackend if _base is not None else object


def _require_api() -> Any:
    """The module holding Task, TaskResult and friends."""
    if _api is None or _core is None:
        raise ImproperlyConfigured(
            "ConveyorBackend needs django.tasks: use Django 6, or pip install django-tasks"
        )
    return _core


def conveyor_priority(priority: int, default: int | None) -> int:
    """Django's -100..100 (higher first, 0 = default) onto Conveyor's 0..9 (lower first)."""
    base = default or 0
    if priority > 0:
        return max(0, base - math.ceil(priority * base / 100))
    if priority < 0:
        return min(9, base + math.ceil(-priority * (9 - base) / 100))
    return base


def _moment(epoch: float | None) -> datetime | None:
    if epoch is None:
        return None
    return to_db(datetime.fromtimestamp(epoch, tz=dt_timezone.utc))


def _jsonable(value: Any) -> Any:
    """What Django's backends store: plain JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


_STATUS = {
    states.PENDING: "READY", states.RECEIVED: "READY", states.RETRY: "READY",
    states.STARTED: "RUNNING", states.PROGRESS: "RUNNING",
    states.SUCCESS: "SUCCESSFUL", states.FAILURE: "FAILED", states.REVOKED: "FAILED",
}


class ConveyorBackend(_BaseBackend):
    """The ``django.tasks`` backend (see the module docstring)."""

    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        _require_api()
        super().__init__(alias, params)
        self._app_path: str | None = self.options.get("APP")

    @property
    def app(self) -> Conveyor:
        if self._app_path:
            return load_object(self._app_path)
        from conveyor._state import current_app

        return current_app()

    # -- the caller's side ---------------------------------------------------------
    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        self.validate_task(task)
        app = self.app
        now = time.time()
        draft = self._result(task, "pending", "READY", list(args), dict(kwargs))
        spec = {"path": task.module_path, "backend": self.alias,
                "takes_context": task.takes_context, "args": draft.args,
                "kwargs": draft.kwargs, "enqueued_at": now}
        options: dict[str, Any] = {
            "queue": task.queue_name,
            "priority": conveyor_priority(task.priority, app.conf.task_default_priority),
        }
        if task.run_after is not None:
            run_after = task.run_after
            options["eta"] = timezone.make_aware(run_after) if timezone.is_naive(run_after) \
                else run_after
        message = app.build_message(RUNNER, [spec], {}, **options)
        result = self._result(task, message.id, "READY", spec["args"], spec["kwargs"],
                              enqueued_at=_moment(now))
        pending = ResultRecord(task_id=message.id, state=states.PENDING, task=RUNNER,
                               args=[spec], kwargs={}, queue=message.queue, date_received=now)

        def send() -> None:
            app.write_record(pending)
            app.enqueue([message])
            if _signals is not None:
                _signals.task_enqueued.send(type(self), task_result=result)

        if not (app.conf.task_enqueue_on_commit and signals.defer_until_commit(send)):
            send()
        return result

    def get_result(self, result_id: str) -> Any:
        app = self.app
        stored = app.backend.get(result_id)
        record = None
        if stored is not None:
            record = ResultRecord.decode(stored.payload,
                                         app.conf.result_accept_content or app.conf.accept_content)
        if record is None or record.task != RUNNER or not record.args:
            raise _exceptions.TaskResultDoesNotExist(result_id)  # type: ignore[union-attr]
        return self._from_record(record, record.args[0])

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        if self.app.conf.result_url.startswith("memory://"):
            messages.append(checks.Warning(
                "ConveyorBackend with a memory:// result store: get_result() only sees "
                "results written by this process", obj=self.alias, id="conveyor.W001"))
        return messages

    # -- the worker's side --------------------------------------------------------------
    def run(self, spec: dict[str, Any], request: Request) -> Any:
        """Run the task a message describes; called by :data:`RUNNER` in the worker."""
        api = _require_api()
        task = self._task_for(spec)
        started = timezone.now()
        result = self._result(task, request.id or "", "RUNNING", spec["args"], spec["kwargs"],
                              enqueued_at=_moment(spec.get("enqueued_at")), started_at=started,
                              last_attempted_at=started,
                              worker_ids=[request.hostname or "?"] * (request.retries + 1))
        self._send_signal("task_started", result)
        try:
            if task.takes_context:
                value = task.call(api.TaskContext(task_result=result), *spec["args"],
                                  **spec["kwargs"])
            else:
                value = task.call(*spec["args"], **spec["kwargs"])
            value = _jsonable(value)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._finish(result, "FAILED", errors=[self._error(type(exc), exc)])
            raise
        self._finish(result, "SUCCESSFUL", value=value)
        return value

    def _finish(self, result: Any, status: str, value: Any = None,
                errors: list[Any] | None = None) -> None:
        object.__setattr__(result, "status", _require_api().TaskResultStatus[status])
        object.__setattr__(result, "finished_at", timezone.now())
        if errors:
            result.errors.extend(errors)
        if status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", value)
        self._send_signal("task_finished", result)

    def _send_signal(self, name: str, result: Any) -> None:
        if _signals is not None:
            getattr(_signals, name).send(type(self), task_result=result)

    # -- building results ----------------------------------------------------------------
    def _task_for(self, spec: dict[str, Any]) -> Any:
        obj = import_string(spec["path"])
        if isinstance(obj, _require_api().Task):
            return obj
        # The path names the bare function (its Task was bound to another name).
        return self.task_class(func=obj, backend=self.alias,
                               takes_context=bool(spec.get("takes_context")))

    def _result(self, task: Any, result_id: str, status: str, args: Any, kwargs: Any,
                **times: Any) -> Any:
        api = _require_api()
        fields: dict[str, Any] = {"enqueued_at": None, "started_at": None, "finished_at": None,
                  "last_attempted_at": None, "worker_ids": [], "errors": []}
        fields.update(times)
        return api.TaskResult(task=task, id=result_id, status=api.TaskResultStatus[status],
                              args=args, kwargs=kwargs, backend=self.alias, **fields)

    def _error(self, kind: type[BaseException] | str, exc: BaseException | None = None,
               trace: str | None = None) -> Any:
        path = kind if isinstance(kind, str) else f"{kind.__module__}.{kind.__qualname__}"
        if trace is None and exc is not None:
            trace = "".join(traceback.format_exception(exc))
        return _require_api().TaskError(exception_class_path=path, traceback=trace or "")

    def _from_record(self, record: ResultRecord, spec: dict[str, Any]) -> Any:
        status = _STATUS.get(record.state, "READY")
        errors = []
        if record.state == states.FAILURE:
            kind = f"{record.exc_module or 'builtins'}.{record.exc_type or 'Exception'}"
            errors.append(self._error(kind, trace=record.traceback))
        elif record.state == states.REVOKED:
            errors.append(self._error("conveyor.exceptions.TaskRevokedError",
                                      trace=str(record.result or "revoked")))
        workers = [record.worker] * (record.retries + 1) if record.worker else []
        result = self._result(
            self._task_for(spec), record.task_id, status, spec["args"], spec["kwargs"],
            enqueued_at=_moment(spec.get("enqueued_at")), started_at=_moment(record.date_started),
            last_attempted_at=_moment(record.date_started),
            finished_at=_moment(record.date_done), worker_ids=workers, errors=errors)
        if status == "SUCCESSFUL":
            object.__setattr__(result, "_return_value", record.result)
        return result


@shared_task(name=RUNNER, bind=True)
def run(self: Any, spec: dict[str, Any]) -> Any:
    """Run one ``django.tasks`` task on this worker (see :meth:`ConveyorBackend.run`)."""
    _require_api()
    return _api.task_backends[spec["backend"]].run(spec, self.request)  # type: ignore[union-attr]


__all__ = ["RUNNER", "ConveyorBackend", "conveyor_priority", "run"]
