"""Conveyor: a production task queue with Celery's habits.

    from conveyor import Conveyor, shared_task, chain, group, chord, signature, current_app
"""

from __future__ import annotations

from conveyor._current import current_app
from conveyor.app import Conveyor, shared_task
from conveyor.canvas import Signature, chain, chord, chunks, group, signature
from conveyor.queues import Queue
from conveyor.result import AsyncResult, GroupResult, ResultSet
from conveyor.task import Task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "Conveyor",
    "GroupResult",
    "Queue",
    "ResultSet",
    "Signature",
    "Task",
    "__version__",
    "chain",
    "chord",
    "chunks",
    "current_app",
    "group",
    "shared_task",
    "signature",
]
