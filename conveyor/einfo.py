"""``ExceptionInfo``: an exception with its traceback, as Celery hands it to hooks.

Celery passes ``einfo`` (billiard's ``ExceptionInfo``) to ``task_failure``,
``task_retry`` and ``Task.on_failure``; code written for it reads
``einfo.exception``, ``einfo.type``, ``einfo.tb`` and ``einfo.traceback``
(the formatted text), or ``str(einfo)``.  This is the same surface, without
the pickling machinery Conveyor does not need (hooks run in the process
that ran the task).
"""

from __future__ import annotations

import traceback as tb
from types import TracebackType


class ExceptionInfo:
    """An exception, its type, its traceback object and its formatted traceback."""

    def __init__(self, exception: BaseException, trace: str | None = None,
                 internal: bool = False) -> None:
        self.exception = exception
        self.type: type[BaseException] = type(exception)
        self.tb: TracebackType | None = exception.__traceback__
        self.traceback = trace if trace is not None else "".join(
            tb.format_exception(self.type, exception, self.tb))
        self.internal = internal

    @property
    def exc_info(self) -> tuple[type[BaseException], BaseException, TracebackType | None]:
        return self.type, self.exception, self.tb

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


__all__ = ["ExceptionInfo"]
