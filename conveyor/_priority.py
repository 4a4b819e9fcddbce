"""Task priority: Celery's numbers, in Celery's order on Redis.

A priority is an integer 0..9 and **lower is more urgent**; a message sent
without one has priority 0, so it is served with the most urgent (Celery's
Redis transport treats a missing priority so, and Celery projects that set
priorities on Redis rely on this order).  Every Conveyor broker serves
this order (tests/contract/broker_contract.py).

As kombu's Redis transport does, priorities are grouped into *steps*
(``broker_transport_options={"priority_steps": [...]}``, default
``[0, 3, 6, 9]``): a priority is served with the highest step not above it,
so 0, 1 and 2 share the first step and are first in, first out among
themselves.  ``list(range(10))`` keeps all ten apart.  A priority below the
first step counts as the first step.  The message keeps the priority it was
sent with (``self.request.delivery_info["priority"]``); only the broker's
order uses the step.

Which priority a message gets, first match wins: ``apply_async(priority=)``,
the task's ``priority`` option, the route's ``priority``, the running
parent task's priority under ``task_inherit_parent_priority``, then
``task_default_priority`` (None: 0).  See docs/decisions/0008-celery-priority-order.md,
which also says how RabbitMQ's order (higher first) will map.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from conveyor.exceptions import ConfigurationError

MIN_PRIORITY, MAX_PRIORITY = 0, 9
DEFAULT_STEPS: tuple[int, ...] = (0, 3, 6, 9)


def check_priority(value: Any) -> int:
    """``value`` as a priority, or a clear error naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or not (
            MIN_PRIORITY <= value <= MAX_PRIORITY):
        raise ConfigurationError(
            f"priority must be an integer 0..9 (0 most urgent, as Celery on Redis), "
            f"got {value!r}")
    return value


def parse_steps(value: Any) -> tuple[int, ...]:
    """``priority_steps`` from ``broker_transport_options``, checked (None: kombu's default)."""
    if value is None:
        return DEFAULT_STEPS
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ConfigurationError(
            f"broker_transport_options['priority_steps'] must be a non-empty list of "
            f"priorities 0..9, got {value!r}")
    steps = sorted({check_priority(step) for step in value})
    return tuple(steps)


def step_of(priority: int, steps: Sequence[int]) -> int:
    """The step a priority is served with: the highest step not above it."""
    index = bisect_right(steps, priority) - 1
    return steps[max(index, 0)]


def resolve(call: Any, task: Any, route: Any, parent: Any, default: Any) -> int:
    """The priority a message gets: the first of these that is not None, else 0."""
    for value in (call, task, route, parent, default):
        if value is not None:
            return check_priority(value)
    return MIN_PRIORITY


__all__ = ["DEFAULT_STEPS", "check_priority", "parse_steps", "resolve", "step_of"]
