"""A task's progress as JSON, in the shape celery-progress's view answers.

``{"task_id", "state", "complete", "success", "progress": {"pending",
"current", "total", "percent", "description"}, "result"}``: ``complete``
says whether to stop polling, ``success`` is true/false once complete (null
before), ``result`` is the return value on success and the error message on
failure.  Two choices differ from celery-progress on purpose: ``RETRY`` is not
complete (Conveyor runs the task again, so the bar keeps polling), and a
custom state that is not final keeps the bar polling instead of ending it.
"""

from __future__ import annotations

import json
from typing import Any

from conveyor import states
from conveyor.contrib.django.progress._recorder import percent_of
from conveyor.result import AsyncResult


def _waiting(state: str) -> dict[str, Any]:
    return {"pending": state == states.PENDING, "current": 0, "total": 100, "percent": 0.0,
            "description": ""}


def _finished() -> dict[str, Any]:
    return {"pending": False, "current": 100, "total": 100, "percent": 100.0,
            "description": ""}


def _reported(meta: Any, state: str) -> dict[str, Any]:
    """The task's own meta, filled in when it only gave ``current`` and ``total``."""
    if not isinstance(meta, dict):
        return _waiting(state)
    try:
        current, total = float(meta.get("current", 0)), float(meta.get("total", 100))
    except (TypeError, ValueError):
        return _waiting(state)
    return {"pending": False, "current": meta.get("current", 0), "total": meta.get("total", 100),
            "percent": percent_of(current, total),
            "description": str(meta.get("description") or "")}


def _jsonable(value: Any) -> Any:
    """The value if JSON can carry it, else its text (a pickled result, say)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def progress_info(result: AsyncResult) -> dict[str, Any]:
    """What the progress view answers for ``result``."""
    state = result.state
    info: dict[str, Any] = {"task_id": result.id, "state": state}
    if state == states.SUCCESS:
        info.update(complete=True, success=True, progress=_finished(),
                    result=_jsonable(result.info))
    elif state in states.READY_STATES:
        message = str(result.info) if state == states.FAILURE else f"Task {state.lower()}"
        info.update(complete=True, success=False, progress=_finished(), result=message)
    elif state == states.RETRY:
        info.update(complete=False, success=None, progress=_waiting(state),
                    result=str(result.info))
    else:
        info.update(complete=False, success=None, progress=_reported(result.info, state))
    return info
