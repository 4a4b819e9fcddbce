"""``from conveyor.schedules import crontab, schedule``: the path users import.

Celery's ``celery.schedules`` moved over by renaming; the schedule kinds
live in ``conveyor/beat/schedules/``.
"""

from conveyor.beat.schedules import (
    NEVER,
    CronField,
    Schedule,
    ScheduleError,
    TimeZone,
    as_schedule,
    clocked,
    crontab,
    crontab_parser,
    schedule,
    schedule_from_dict,
    solar,
)

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
