"""When periodic tasks run: ``schedule`` (intervals), ``crontab``, ``solar``, ``clocked``.

The first two kinds exist because users mean two different things:

* ``schedule(300)`` means "every five minutes, counted from the last run". It is
  arithmetic on absolute time, so daylight saving never stretches or shrinks an
  interval: across a spring-forward night an hourly interval still runs every
  3600 real seconds.
* ``crontab(minute=0, hour=9)`` means "at 09:00 on the clock on the wall". Its
  fields are matched against wall-clock time in the schedule's zone: ``tz=``,
  else the app's ``timezone`` setting (applied by ``as_schedule``), else UTC.

Daylight saving and cron's day rules head ``crontab.py``.  ``solar`` runs at
sunrise, sunset, noon or a twilight at a place (the astronomy is in
``_sun.py``); ``clocked`` runs once, at an instant (django-celery-beat's
``ClockedSchedule``).

One module per kind; this one gathers them and turns stored or configured
values into schedules.  ``conveyor.schedules`` re-exports it: that is the
path users import (Celery's ``celery.schedules``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from conveyor.beat.schedules.base import Schedule, ScheduleError, TimeZone
from conveyor.beat.schedules.clocked import NEVER, clocked
from conveyor.beat.schedules.cron_fields import CronField, crontab_parser
from conveyor.beat.schedules.crontab import crontab
from conveyor.beat.schedules.interval import schedule
from conveyor.beat.schedules.solar import solar

__all__ = [
    "NEVER",
    "CronField",
    "Schedule",
    "ScheduleError",
    "TimeZone",
    "as_schedule",
    "clocked",
    "crontab",
    "crontab_parser",
    "schedule",
    "schedule_from_dict",
    "solar",
]

_KINDS: dict[str, type[Schedule]] = {
    kind.type_name: kind for kind in (schedule, crontab, solar, clocked)
}


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule stored with ``to_dict``, choosing the kind by its ``"type"``."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ScheduleError(
            f"stored schedule has unknown type {kind!r} (expected one of {sorted(_KINDS)}): "
            f"{data!r}"
        )
    return _KINDS[kind].from_dict(data)  # type: ignore[attr-defined]


def as_schedule(value: object, tz: TimeZone | None = None) -> Schedule:
    """What a ``beat_schedule`` entry's ``"schedule"`` means, in the app's zone ``tz``.

    Seconds and timedeltas become ``schedule``; a Schedule passes through, taking
    ``tz`` only if it did not pick a zone of its own.
    """
    if isinstance(value, Schedule):
        return value if tz is None else value.with_default_tz(tz)
    if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
        return schedule(value)
    raise ScheduleError(
        f"cannot use {value!r} as a schedule: expected seconds (int or float), "
        "a timedelta, or a Schedule such as crontab(...)"
    )
