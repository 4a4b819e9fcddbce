"""Tasks every app has: the runners behind ``chunks``/``map``/``starmap`` and chords.

They are registered on each app when it is created (see
:func:`conveyor._state.register_app`), bound to that app, so a worker finds
the mapped task in its own registry and never in another app's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from conveyor.canvas import COLLECT_TASK, MAP_TASK, STARMAP_TASK

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.task import Task


def _call(task: Task, *args: Any) -> Any:
    result = task(*args)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


def run_map(self: Task, task: str, items: Iterable[Any]) -> list[Any]:
    """``task(item)`` for each item, in this one message (``xmap``, ``task.map``)."""
    target = self.app.get_task(task)
    return [_call(target, item) for item in items]


def run_starmap(self: Task, task: str, items: Iterable[Iterable[Any]]) -> list[Any]:
    """``task(*item)`` for each item, in this one message (``chunks``, ``task.starmap``)."""
    target = self.app.get_task(task)
    return [_call(target, *item) for item in items]


def collect(values: list[Any]) -> list[Any]:
    """A group's values as one value: the body of a group that feeds a chord or a chain."""
    return values


BUILTINS: tuple[tuple[str, Callable[..., Any], bool], ...] = (
    (MAP_TASK, run_map, True),
    (STARMAP_TASK, run_starmap, True),
    (COLLECT_TASK, collect, False),
)


def register_builtins(app: Conveyor) -> None:
    """Add the built-in tasks to ``app``'s registry, bound to ``app``."""
    from conveyor.task import Task, task_options

    for name, fn, bind in BUILTINS:
        app._register(Task(fn, task_options(fn, name, {"bind": bind}), app))
