"""``schedule``: every so many seconds, counted from the last run, in absolute time."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar

from conveyor.beat.schedules.base import (
    Schedule,
    ScheduleError,
    TimeZone,
    as_utc,
    check_keys,
    zone_of,
)

__all__ = ["schedule"]


def _run_every(value: object) -> timedelta:
    """Seconds or a timedelta as a positive timedelta, naming the value if it is not one."""
    if isinstance(value, timedelta):
        every = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ScheduleError(f"run_every must be a finite number of seconds, got {value!r}")
        try:
            every = timedelta(seconds=value)
        except OverflowError as exc:
            raise ScheduleError(f"run_every is too large: {value!r} seconds") from exc
    else:
        raise ScheduleError(
            f"run_every must be seconds (int or float) or a timedelta, got {value!r}"
        )
    if every <= timedelta(0):
        raise ScheduleError(f"run_every must be greater than zero, got {value!r}")
    return every


@dataclass(frozen=True, init=False, repr=False)
class schedule(Schedule):  # lower case: Celery's spelling, so imports move unchanged
    """Run every ``run_every`` (seconds or a timedelta), counted from the last run.

    Intervals are absolute time: DST changes never make one longer or shorter,
    which is why the schedule has no zone of its own and ``with_tz`` is a no-op.
    """

    type_name: ClassVar[str] = "interval"
    run_every: timedelta

    def __init__(self, run_every: float | timedelta) -> None:
        object.__setattr__(self, "run_every", _run_every(run_every))

    def __repr__(self) -> str:
        return f"schedule({self.run_every.total_seconds()!r})"

    @property
    def seconds(self) -> float:
        """The interval in seconds."""
        return self.run_every.total_seconds()

    def next_run(self, after: datetime) -> datetime:
        """``after + run_every`` in real elapsed time, in the zone ``after`` came in."""
        moment = as_utc(after, "after") + self.run_every
        return moment.astimezone(after.tzinfo)

    def with_tz(self, tz: TimeZone) -> schedule:
        """Self: an interval reads no clock, so a zone changes nothing (it is still checked)."""
        zone_of(tz)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "interval", "seconds": 300.0}``."""
        return {"type": self.type_name, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> schedule:
        """The inverse of ``to_dict``."""
        check_keys(data, cls.type_name, required={"seconds"}, allowed={"seconds"})
        return cls(data["seconds"])
