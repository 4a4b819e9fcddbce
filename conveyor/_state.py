"""Which app ``shared_task`` tasks belong to, without a proxy object.

Every app registers itself here when created; the most recent one (or the one
marked with ``set_current``) is *current*.  ``@shared_task`` definitions are
kept in a list and added to every app, including apps created later, so a
task module may be imported before the app exists.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task

_lock = threading.RLock()
_apps: weakref.WeakSet[Conveyor] = weakref.WeakSet()
_current: Conveyor | None = None
_shared: list[Task] = []


def register_app(app: Conveyor, make_current: bool) -> None:
    global _current
    from conveyor._builtins import register_builtins

    with _lock:
        _apps.add(app)
        register_builtins(app)  # chunks/map/starmap runners and conveyor.collect
        for task in _shared:
            app._register(task)
        if make_current or _current is None:
            _current = app


def set_current(app: Conveyor) -> None:
    global _current
    with _lock:
        _current = app


def current_app() -> Conveyor:
    """The current app; a default one (SQLite, default settings) if none exists."""
    with _lock:
        if _current is not None:
            return _current
    from conveyor.app import Conveyor

    return Conveyor("default")


def add_shared_task(task: Task) -> None:
    with _lock:
        _shared.append(task)
        for app in list(_apps):
            app._register(task)


def swap_current(app: Conveyor | None) -> Conveyor | None:
    """Make ``app`` current (None: none) and return the previous one, to restore later.

    For test fixtures, which must leave the current app as they found it.
    """
    global _current
    with _lock:
        previous, _current = _current, app
        return previous
