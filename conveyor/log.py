"""Logging: task loggers whose lines name the task, and worker/beat log setup.

``get_task_logger(__name__)`` returns a logger whose records carry
``task_name`` and ``task_id`` of the task running in this context (empty
outside a task), so a worker's log format can show them (Celery's
``%(task_name)s[%(task_id)s]``) and a JSON handler can index them.

:func:`setup_logging` is Celery's ``Logging.setup`` for worker and beat
processes: the ``setup_logging`` signal, ``worker_hijack_root_logger``,
``worker_log_format``, ``worker_task_log_format``,
``worker_redirect_stdouts(_level)``, then ``after_setup_logger`` and
``after_setup_task_logger``.  Nothing here runs at import time.
"""

from __future__ import annotations

import io
import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any, TextIO

from conveyor import _redact as redact
from conveyor._context import running_request

if TYPE_CHECKING:
    from conveyor.app import Conveyor


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
#: Task loggers' default: the same line, which already names the task and its id.
DEFAULT_TASK_FORMAT = DEFAULT_FORMAT
#: The parent of every :func:`get_task_logger` logger (Celery's ``celery.task``).
TASK_LOGGER = "conveyor.task"
#: Where redirected ``print`` output is logged (Celery's ``celery.redirected``).
REDIRECTED_LOGGER = "conveyor.redirected"


def _level(level: str | int) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r}; use DEBUG, INFO, WARNING, ERROR "
                         "or CRITICAL")
    return value


def _configured(logger: logging.Logger) -> bool:
    return any(not isinstance(h, logging.NullHandler) for h in logger.handlers)


#: Celery's colours by level (INFO stays plain).
_COLORS = {"DEBUG": "\x1b[34m", "WARNING": "\x1b[33m", "ERROR": "\x1b[31m",
           "CRITICAL": "\x1b[35m"}


class RedactingFormatter(logging.Formatter):
    """Formats a record, traceback included, then hides URL passwords and
    ``secret=value`` pairs in it: a log line is the easiest place to leak one."""

    def format(self, record: logging.LogRecord) -> str:
        return redact.text(super().format(record))


class ColorFormatter(RedactingFormatter):
    """Colours a whole line by its level, as Celery's ``ColorFormatter``."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        color = _COLORS.get(record.levelname)
        return f"{color}{line}\x1b[0m" if color else line


def _stderr() -> TextIO:
    """The real stderr, under a redirect too (so handlers never write to a proxy)."""
    stream = sys.stderr
    return stream.original if isinstance(stream, LoggingProxy) else stream


def use_color(setting: bool | None) -> bool:
    """Celery's ``worker_log_color``: off when False, else only on a terminal."""
    if setting is False:
        return False
    isatty = getattr(_stderr(), "isatty", None)
    return bool(isatty and isatty())


def _add_handler(logger: logging.Logger, fmt: str, colorize: bool) -> None:
    """Give ``logger`` a stderr handler, unless it already has one (as Celery does)."""
    if _configured(logger):
        return
    handler = logging.StreamHandler(_stderr())
    handler.addFilter(TaskContextFilter())
    handler.setFormatter(ColorFormatter(fmt) if colorize else RedactingFormatter(fmt))
    logger.addHandler(handler)


def setup_logging(level: str | int = "INFO", fmt: str | None = None, *,
                  task_fmt: str | None = None, hijack_root: bool = True,
                  redirect_stdouts: bool = False, redirect_level: str | int = "WARNING",
                  colorize: bool | None = False, logfile: str | None = None) -> bool:
    """Configure logging for a worker or beat process, as Celery's ``Logging.setup``.

    A connected ``setup_logging`` signal receiver takes over: Conveyor then
    configures nothing (and redirects nothing), and this returns True.
    Otherwise: with ``hijack_root`` the root logger's handlers are replaced
    by one stderr handler in ``fmt``; without it they are left alone (a
    handler is added only if the root has none); task loggers get their own
    handler in ``task_fmt`` and stop propagating; then ``after_setup_logger``
    and ``after_setup_task_logger`` are sent, and ``print`` output is logged
    at ``redirect_level`` when ``redirect_stdouts`` is on.  ``colorize``
    (``worker_log_color``) colours lines by level on a terminal; None: if
    stderr is one.
    """
    from conveyor import signals

    levelno = _level(level)
    fmt = fmt or DEFAULT_FORMAT
    color = use_color(colorize)
    args = {"loglevel": levelno, "logfile": logfile, "format": fmt, "colorize": color}
    if signals.setup_logging.send(sender=None, **args):
        return True
    root, task_logger = logging.getLogger(), logging.getLogger(TASK_LOGGER)
    if hijack_root:
        for logger in (root, task_logger, logging.getLogger(REDIRECTED_LOGGER)):
            logger.handlers[:] = []
    _add_handler(root, fmt, color)
    root.setLevel(levelno)
    signals.after_setup_logger.send(sender=None, logger=root, **args)
    task_fmt = task_fmt or DEFAULT_TASK_FORMAT
    _add_handler(task_logger, task_fmt, color)
    task_logger.setLevel(levelno)
    task_logger.propagate = False
    signals.after_setup_task_logger.send(sender=None, logger=task_logger,
                                         **{**args, "format": task_fmt})
    if redirect_stdouts:
        redirect_stdouts_to_logger(_level(redirect_level))
    return False


def setup_logging_for(app: Conveyor, level: str | int, logfile: str | None = None) -> bool:
    """:func:`setup_logging` with the app's ``worker_*`` logging settings (CLI).

    ``logfile`` (``-f``) is only passed on to signal receivers: the command
    has already pointed stderr, where the handlers write, at it."""
    conf = app.conf
    return setup_logging(level, conf.worker_log_format, task_fmt=conf.worker_task_log_format,
                         hijack_root=conf.worker_hijack_root_logger,
                         redirect_stdouts=conf.worker_redirect_stdouts,
                         redirect_level=conf.worker_redirect_stdouts_level,
                         colorize=conf.worker_log_color, logfile=logfile)


class LoggingProxy(io.TextIOBase):
    """A stand-in for ``sys.stdout``/``sys.stderr`` that logs each line written.

    Partial lines wait for their newline (or ``flush``).  A write made while
    logging (a handler reporting its own failure) goes to the real stream,
    so a broken handler cannot loop.
    """

    def __init__(self, logger: logging.Logger, level: int, original: TextIO) -> None:
        super().__init__()
        self.logger, self.level, self.original = logger, level, original
        self._partial = ""
        self._local = threading.local()
        self._lock = threading.Lock()  # threads pool: one partial line per proxy

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.original, "encoding", None) or "utf-8"

    def write(self, data: str) -> int:
        if getattr(self._local, "busy", False):
            return self.original.write(data)
        with self._lock:
            *lines, self._partial = (self._partial + data).split("\n")
        for line in lines:
            self._log(line)
        return len(data)

    def _log(self, line: str) -> None:
        if not line.strip():
            return
        self._local.busy = True
        try:
            self.logger.log(self.level, line.rstrip())
        finally:
            self._local.busy = False

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        self._log(line)

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self.original.fileno()  # writes to the descriptor bypass the logger


def redirect_stdouts_to_logger(level: int = logging.WARNING) -> None:
    """Send ``sys.stdout`` and ``sys.stderr`` writes to the ``conveyor.redirected`` logger."""
    logger = logging.getLogger(REDIRECTED_LOGGER)
    for name in ("stdout", "stderr"):
        current = getattr(sys, name)
        if not isinstance(current, LoggingProxy):
            setattr(sys, name, LoggingProxy(logger, level, current))


def get_task_logger(name: str) -> logging.LoggerAdapter:  # type: ignore[type-arg,unused-ignore]
    """A logger for task modules (Celery's ``celery.utils.log.get_task_logger``).

    As in Celery, a logger whose parent is the root is re-parented under
    ``conveyor.task``, so in a worker its lines use ``worker_task_log_format``.
    """
    logger = logging.getLogger(name)
    if logger.parent is None or logger.parent is logging.root:
        logger.parent = logging.getLogger(TASK_LOGGER)
    return TaskLoggerAdapter(logger, {})


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)

__all__ = [
    "ColorFormatter",
    "LoggingProxy",
    "RedactingFormatter",
    "TaskContextFilter",
    "TaskLoggerAdapter",
    "get_logger",
    "get_task_logger",
    "redirect_stdouts_to_logger",
]
