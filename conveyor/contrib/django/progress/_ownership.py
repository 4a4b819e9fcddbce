"""Who may read a task's progress: the browser session that started it.

The view that sends the task calls :func:`track`; the ids live in the
session (signed cookie or server-side store, whichever the project uses), so
no table is needed and a stranger's guess of an id reads nothing.  Logging
in keeps them (Django cycles the session key but keeps its data); logging out
forgets them.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

#: How many task ids one session remembers; the oldest are forgotten first.
MAX_TRACKED = 100

_SESSION_KEY = "conveyor_progress_tasks"


def _task_id(result: Any) -> str:
    return result if isinstance(result, str) else str(result.id)


def _session(request: HttpRequest) -> Any:
    session = getattr(request, "session", None)
    if session is None:
        raise ImproperlyConfigured(
            "progress bars need django.contrib.sessions.middleware.SessionMiddleware: "
            "a task's progress is shown only to the session that started it")
    return session


def track(request: HttpRequest, result: Any) -> str:
    """Let this session read the progress of ``result`` (an ``AsyncResult`` or an id).

    Returns the id, for the template or the redirect.
    """
    task_id = _task_id(result)
    session = _session(request)
    tracked = [t for t in session.get(_SESSION_KEY, []) if t != task_id]
    tracked.append(task_id)
    session[_SESSION_KEY] = tracked[-MAX_TRACKED:]
    return task_id


def owns(request: HttpRequest, task_id: str) -> bool:
    """Whether this session started ``task_id`` (called :func:`track` for it)."""
    return task_id in _session(request).get(_SESSION_KEY, [])
