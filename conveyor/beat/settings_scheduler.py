"""The default scheduler: entries from the ``beat_schedule`` setting, checked at load."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from conveyor.beat import schedules
from conveyor.beat.scheduler import Entry, Scheduler
from conveyor.beat.state import open_beat_state
from conveyor.exceptions import ConfigurationError, ConveyorError

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = ["ENTRY_OPTIONS", "SettingsScheduler", "entry_from_settings"]

_ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "relative")
#: ``options`` a beat_schedule entry may pass on to ``send_task``.  Beat sets
#: the task id and idempotency key itself, and an ``eta`` would be the same
#: moment for every tick.
ENTRY_OPTIONS = frozenset({
    "queue", "priority", "expires", "countdown", "routing_key", "exchange", "headers",
    "time_limit", "soft_time_limit", "ignore_result", "serializer", "max_deliveries",
    "link", "link_error", "shadow",
})


class SettingsScheduler(Scheduler):
    """Entries from ``beat_schedule``; run history beside the broker's data.

    The default scheduler.  Entries take Celery's keys (``task``, ``schedule``,
    ``args``, ``kwargs``, ``options``, ``relative``); each is checked when
    loaded, down to whether its arguments can be serialized, so a mistake
    stops beat at start with the entry and key named instead of failing at
    3 a.m. when the tick comes.
    """

    # Beat stores its scheduler's import path for the monitor (``scheduler_path``):
    # the public one, which every release can import, not this module's.
    __module__ = "conveyor.beat"
    refresh_interval = 30.0

    def __init__(self, app: Conveyor) -> None:
        super().__init__(app)
        self.state = open_beat_state(app)

    def load(self) -> list[Entry]:
        tz = self.app.conf.timezone
        return [entry_from_settings(self.app, name, spec, tz)
                for name, spec in self.app.conf.beat_schedule.items()]

    def last_run(self, name: str) -> datetime | None:
        return self.state.last_run(name)

    def record_run(self, entry: Entry, run_at: datetime) -> None:
        self.state.record_run(entry.name, run_at)

    def total_run_count(self, name: str) -> int:
        """How many ticks ``name`` ran for (0 if never)."""
        runs = self.state.runs([name]).get(name)
        return 0 if runs is None else runs.total_run_count

    def close(self) -> None:
        self.state.close()


def entry_from_settings(app: Conveyor, name: object, spec: object, tz: str | None) -> Entry:
    """One ``beat_schedule`` item as an :class:`Entry`; ConfigurationError names what is wrong."""
    if not isinstance(name, str) or not name.strip() or "\n" in name:
        raise ConfigurationError(
            f"beat_schedule: entry names must be non-empty one-line strings, got {name!r}")
    where = f"beat_schedule[{name!r}]"
    if not isinstance(spec, Mapping):
        raise ConfigurationError(
            f"{where} must be a dict with 'task' and 'schedule', got {type(spec).__name__}")
    unknown = sorted(str(key) for key in spec if key not in _ENTRY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown key {unknown[0]!r} (an entry takes {', '.join(_ENTRY_KEYS)})")
    task = spec.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{where}['task'] must be the task's name, got {task!r}")
    if "schedule" not in spec:
        raise ConfigurationError(
            f"{where}: missing key 'schedule' (seconds, a timedelta, or crontab(...))")
    try:
        schedule = schedules.as_schedule(spec["schedule"], tz)
    except schedules.ScheduleError as exc:
        raise ConfigurationError(f"{where}['schedule']: {exc}") from exc
    if not isinstance(spec.get("relative", False), bool):
        raise ConfigurationError(f"{where}['relative'] must be True or False")
    entry = Entry(
        name=name, task=task, schedule=schedule,
        args=_entry_args(where, spec.get("args")),
        kwargs=_entry_kwargs(where, spec.get("kwargs")),
        options=_entry_options(where, spec.get("options")),
    )
    _check_sendable(app, entry, where)
    return entry


def _entry_args(where: str, value: object) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise ConfigurationError(f"{where}['args'] must be a list or tuple, got {value!r}")
    return tuple(value)


def _entry_kwargs(where: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            f"{where}['kwargs'] must be a dict with string keys, got {value!r}")
    return dict(value)


def _entry_options(where: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{where}['options'] must be a dict, got {value!r}")
    unknown = sorted(str(key) for key in value if key not in ENTRY_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"{where}['options']: unknown option {unknown[0]!r} "
            f"(known: {', '.join(sorted(ENTRY_OPTIONS))})")
    return dict(value)


def _check_sendable(app: Conveyor, entry: Entry, where: str) -> None:
    """Build and encode the message once, so bad arguments fail now, not at the tick."""
    try:
        app.build_message(entry.task, entry.args, entry.kwargs, **entry.options).encode()
    except (ConveyorError, TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from exc

