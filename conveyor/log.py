"""Loggers for tasks: every line names the task and its id.

``get_task_logger(__name__)`` returns a logger whose records carry
``task_name`` and ``task_id`` of the task running in this context (empty
outside a task), so a worker's log format can show them and a JSON handler
can index them.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from conveyor import redact
from conveyor.context import running_request


class TaskLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    # (generic only in typeshed; runtime class is not subscriptable on 3.10)
    """Adds the running task's name and id to every record."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        request = running_request()
        extra = dict(kwargs.get("extra") or {})
        extra.setdefault("task_name", request.task if request else "")
        extra.setdefault("task_id", request.id if request else "")
        kwargs["extra"] = extra
        return msg, kwargs


class TaskContextFilter(logging.Filter):
    """Give every record ``task_name``/``task_id`` (and a ready-made ``task``
    suffix) so one format serves lines inside and outside tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        task_id = getattr(record, "task_id", "")
        task_name = getattr(record, "task_name", "")
        if not task_id:
            request = running_request()
            task_id = (request.id if request else "") or ""
            task_name = (request.task if request else "") or ""
            record.task_id, record.task_name = task_id, task_name
        record.task = f" task={task_name} id={task_id}" if task_id else ""
        return True


DEFAULT_FORMAT = "[%(asctime)s %(levelname)s %(processName)s] %(name)s: %(message)s%(task)s"


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then hides URL passwords and
    ``secret=value`` pairs in it: a log line is the easiest place to leak one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact.text(super().format(record))


def setup_logging(level: str | int = "INFO", fmt: str | None = None) -> None:
    """Configure the root handler for worker/beat processes (CLI only)."""
    handler = logging.StreamHandler()
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(RedactingFormatter(fmt or DEFAULT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)


def get_task_logger(name: str) -> logging.LoggerAdapter:  # type: ignore[type-arg,unused-ignore]
    """A logger for task modules (Celery's ``celery.utils.log.get_task_logger``)."""
    return TaskLoggerAdapter(logging.getLogger(name), {})


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
