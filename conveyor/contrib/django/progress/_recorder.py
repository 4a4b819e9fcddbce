"""The task side: report how far a task has got, as celery-progress's recorder does."""

from __future__ import annotations

from typing import Any, Protocol

from conveyor import states


class _Reporting(Protocol):
    def update_state(self, task_id: str | None = None, state: str = ...,
                     meta: Any = None) -> None: ...


def percent_of(current: float, total: float) -> float:
    """``current`` of ``total`` as a percentage, two decimals, kept within 0..100."""
    if total <= 0:
        return 0.0
    return round(min(100.0, max(0.0, current * 100.0 / total)), 2)


class ProgressRecorder:
    """``ProgressRecorder(self).set_progress(i, total, description)`` in a bound task.

    Stores the ``PROGRESS`` state with ``current``, ``total``, ``percent``,
    ``description`` and ``pending`` in its meta: the keys celery-progress
    stores, so its pages keep working, and ``current``/``total`` for the
    monitor's bar.
    """

    def __init__(self, task: _Reporting) -> None:
        self.task = task

    def set_progress(self, current: float, total: float,
                     description: str = "") -> tuple[str, dict[str, Any]]:
        meta = {"pending": False, "current": current, "total": total,
                "percent": percent_of(current, total), "description": description}
        self.task.update_state(state=states.PROGRESS, meta=meta)
        return states.PROGRESS, meta
