"""Every error Conveyor raises, under one root.

The tree::

    ConveyorError
    ├── ConfigurationError          settings that are unknown, mistyped or inconsistent
    │   └── QueueNotFound           routed to an undeclared queue (create-missing off)
    ├── ScheduleError               a crontab/interval that cannot be (conveyor.schedules)
    ├── SolarLibraryMissing         a solar schedule without PyEphem (conveyor.beat.schedules._sun)
    ├── DeployError                 deployment files that cannot be generated (conveyor._deploy)
    ├── ActionError                 a monitor action that cannot be done (conveyor.monitor.actions)
    ├── SerializationError          a value that cannot travel in a message or a result
    │   ├── ContentDisallowed       a content type outside ``accept_content``
    │   ├── MessageDecodeError      a body that is not a Conveyor message (conveyor._message)
    │   └── SignatureError          a body without a valid signature (conveyor._signing)
    ├── BrokerError                 the broker refused or could not be reached
    │   └── BrokerUnavailable       connection lost; the operation did not happen
    ├── ResultError
    │   ├── ResultTooLarge          a result above ``result_max_bytes``
    │   └── TimeoutError            ``AsyncResult.get`` waited longer than asked
    ├── NotRegistered               a task name nobody registered
    ├── TaskControl                 raised inside tasks to steer the worker
    │   ├── Retry                   "run me again later"
    │   ├── Reject                  "do not run me again" (or requeue)
    │   └── Ignore                  "forget this message without a result"
    ├── MaxRetriesExceededError     retries exhausted and no original error to re-raise
    ├── TaskRevokedError            the task was revoked before or while running
    ├── SoftTimeLimitExceeded       raised inside a task at its soft limit
    ├── TimeLimitExceeded           recorded when the hard limit killed the task
    ├── WorkerLostError             the process running the task died
    └── RemoteTaskError             stand-in for a task error type this process cannot import

``TimeoutError`` also subclasses the builtin so ``except TimeoutError`` works.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

from conveyor import _redact as redact


class ConveyorError(Exception):
    """Root of every error Conveyor raises.

    Text arguments pass through :func:`conveyor._redact.text`, so a message
    that names a broker or store URL never carries its password, whoever
    formats it (issue 15, finding 1).
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*(redact.text(a) if isinstance(a, str) else a for a in args))


class ConfigurationError(ConveyorError, ValueError):
    """A setting is unknown, has the wrong type, or contradicts another."""


class QueueNotFound(ConfigurationError):
    """A task was routed to a queue missing from ``task_queues`` (Celery's name).

    Only with ``task_create_missing_queues = False``.
    """


class SerializationError(ConveyorError, TypeError):
    """A value cannot be encoded into (or decoded from) a message or result."""


class ContentDisallowed(SerializationError):
    """The content type of a message is not listed in ``accept_content``."""


class BrokerError(ConveyorError):
    """The broker refused an operation."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """The broker could not be reached; the operation did not take place."""


class ResultError(ConveyorError):
    """Base for result store errors."""


class ResultTooLarge(ResultError):
    """A task returned a value larger than ``result_max_bytes``."""


class TimeoutError(ResultError, builtins.TimeoutError):
    """Waiting for a result took longer than the caller allowed."""


class NotRegistered(ConveyorError, KeyError):
    """No task is registered under this name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class TaskControl(ConveyorError):
    """Raised from inside a task to tell the worker what to do with its message."""


class Retry(TaskControl):
    """Raised by ``Task.retry``: the worker has already scheduled the next attempt."""

    def __init__(
        self,
        message: str | None = None,
        exc: BaseException | None = None,
        when: float | datetime | None = None,
    ) -> None:
        self.exc = exc
        self.when = when
        super().__init__(message or self._describe(exc, when))

    @staticmethod
    def _describe(exc: BaseException | None, when: float | datetime | None) -> str:
        reason = f": {exc!r}" if exc is not None else ""
        if isinstance(when, (int, float)):
            return f"Retry in {when:g}s{reason}"
        if when is not None:
            return f"Retry at {when.isoformat()}{reason}"
        return f"Retry{reason}"


class Reject(TaskControl):
    """Refuse the message: dead-letter it, or put it back when ``requeue`` is true."""

    def __init__(self, reason: Any = None, requeue: bool = False) -> None:
        self.reason = reason
        self.requeue = requeue
        super().__init__(reason, requeue)


class Ignore(TaskControl):
    """Acknowledge the message and record nothing."""


class MaxRetriesExceededError(ConveyorError):
    """A task asked to retry after it used all of its retries."""


class TaskRevokedError(ConveyorError):
    """The task was revoked."""


class SoftTimeLimitExceeded(ConveyorError):
    """Raised inside a running task when its soft time limit passes; it may clean up."""


class TimeLimitExceeded(ConveyorError):
    """The task passed its hard time limit and its process was killed."""


class WorkerLostError(ConveyorError):
    """The process running the task exited before the task finished."""


class RemoteTaskError(ConveyorError):
    """A task failed with an exception type this process cannot import."""

    def __init__(self, exc_type: str, message: str) -> None:
        self.exc_type = exc_type
        super().__init__(f"{exc_type}: {message}")

__all__ = [
    "BrokerError",
    "BrokerUnavailable",
    "ConfigurationError",
    "ContentDisallowed",
    "ConveyorError",
    "Ignore",
    "MaxRetriesExceededError",
    "NotRegistered",
    "QueueNotFound",
    "Reject",
    "RemoteTaskError",
    "ResultError",
    "ResultTooLarge",
    "Retry",
    "SerializationError",
    "SoftTimeLimitExceeded",
    "TaskControl",
    "TaskRevokedError",
    "TimeLimitExceeded",
    "TimeoutError",
    "WorkerLostError",
]
