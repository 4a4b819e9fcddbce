"""``crontab``: wall-clock times in a zone, with one rule for daylight saving.

A crontab's fields are matched against wall-clock time in the schedule's zone:
``tz=``, else the app's ``timezone`` setting (applied by ``as_schedule``),
else UTC.  The rules beat relies on (also in ``docs/periodic.md``):

* A wall time that does not exist, because it falls in a spring-forward gap
  (02:30 on the night Europe/Berlin jumps from 02:00 to 03:00), runs once at the
  first instant after the gap: 03:00 local. Every tick inside one gap
  (``minute="*/15"`` has four) collapses into that single run, so nothing is
  skipped and nothing piles up.
* A wall time that occurs twice, because it falls in a fall-back overlap, runs
  once, at its first occurrence (``fold=0``). The repeated hour has no runs of
  its own: an hourly job at minute 30 runs at 02:30 summer time and next at
  03:30 winter time, two real hours later. The same wall-clock minute therefore
  never runs twice on one day.

Day of month and day of week follow cron: when both are restricted (neither
is written as ``"*"``; ``"*/2"`` and ``"1-31"`` are restrictions) a day matches
if *either* matches (the Vixie cron rule), so ``crontab(day_of_month=1,
day_of_week="mon")`` runs on the 1st and on every Monday. When one of them is
``"*"``, only the other one decides.

``next_run`` never walks minute by minute: it steps month, day, hour, minute,
jumping straight to the next allowed value of each field, so even a schedule
that only matches on 29 February is answered in microseconds.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import MAXYEAR, datetime, timedelta, timezone
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from conveyor.beat.schedules.base import (
    Schedule,
    ScheduleError,
    TimeZone,
    as_utc,
    check_keys,
    utc_zone,
    zone_of,
)
from conveyor.beat.schedules.cron_fields import FIELD_NAMES, SPECS, CronField, next_in, parse_field

__all__ = ["crontab"]

_UTC = timezone.utc
_MINUTE = timedelta(minutes=1)
# Beyond any real schedule, but bounds the search should the field logic ever be wrong.
_SEARCH_STEPS = 100_000
# The longest each month can be, so an impossible date ("31 February") is refused
# when the crontab is built instead of sending next_run on an endless search.
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30,
                  7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}  # fmt: skip



# --------------------------------------------------------------------------- DST resolution


def _wall_to_instant(wall: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant at which a naive wall time runs under the DST rule.

    Repeated wall times resolve to their first occurrence (fold=0); wall times
    that do not exist resolve to the end of the gap that swallowed them.
    """
    first = wall.replace(tzinfo=tz, fold=0).astimezone(_UTC)
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    return _end_of_gap(wall, tz)


def _end_of_gap(wall: datetime, tz: ZoneInfo) -> datetime:
    """The first instant after the spring-forward gap containing ``wall``, in UTC.

    Inside a gap, fold=1 reads ``wall`` with the offset in force after the jump
    and fold=0 with the one before, which brackets the transition; a binary
    search on whole seconds (tz data changes offsets on whole seconds) finds it.
    """
    low = math.floor(wall.replace(tzinfo=tz, fold=1).timestamp())
    high = math.ceil(wall.replace(tzinfo=tz, fold=0).timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, tz).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, _UTC)


# --------------------------------------------------------------------------- crontab


@dataclass(frozen=True, init=False, repr=False)
class crontab(Schedule):  # lower case: Celery's spelling, so imports move unchanged
    """Run at wall-clock times that match every field, read in the schedule's zone.

    Fields take cron syntax (``"*"``, ``5``, ``"*/15"``, ``"0,30"``, ``"1-5"``,
    ``"1-10/2"``, ``"mon-fri"``, ``"jan"``) or a set of ints. Sunday is 0 or 7.
    Equality compares what the schedule does, not how it was spelled:
    ``crontab(minute="0,30") == crontab(minute={30, 0})``.
    """

    type_name: ClassVar[str] = "crontab"

    # As written (ints and sets turned into text): shown by repr, stored by to_dict.
    minute: str = field(compare=False)
    hour: str = field(compare=False)
    day_of_week: str = field(compare=False)
    day_of_month: str = field(compare=False)
    month_of_year: str = field(compare=False)
    tz: ZoneInfo
    # False until a user picks a zone, so that the app's timezone setting applies.
    _tz_explicit: bool
    # Sorted tuples where next_run bisects for the next value, sets where it tests membership.
    _minutes: tuple[int, ...]
    _hours: tuple[int, ...]
    _months: tuple[int, ...]
    _days_of_month: frozenset[int]
    _days_of_week: frozenset[int]
    # Vixie cron: with both day fields restricted, a day matching either one runs.
    _day_or: bool

    def __init__(
        self,
        minute: CronField = "*",
        hour: CronField = "*",
        day_of_week: CronField = "*",
        day_of_month: CronField = "*",
        month_of_year: CronField = "*",
        tz: TimeZone | None = None,
    ) -> None:
        raw = (minute, hour, day_of_week, day_of_month, month_of_year)
        parsed = {
            name: parse_field(SPECS[name], value)
            for name, value in zip(FIELD_NAMES, raw, strict=True)
        }
        set_ = object.__setattr__  # the dataclass is frozen; this is its only writer
        for name, (text, _) in parsed.items():
            set_(self, name, text)
        set_(self, "tz", utc_zone() if tz is None else zone_of(tz))
        set_(self, "_tz_explicit", tz is not None)
        set_(self, "_minutes", tuple(sorted(parsed["minute"][1])))
        set_(self, "_hours", tuple(sorted(parsed["hour"][1])))
        set_(self, "_months", tuple(sorted(parsed["month_of_year"][1])))
        set_(self, "_days_of_month", parsed["day_of_month"][1])
        set_(self, "_days_of_week", parsed["day_of_week"][1])
        set_(self, "_day_or", self.day_of_month != "*" and self.day_of_week != "*")
        self._check_some_day_exists()

    def _check_some_day_exists(self) -> None:
        # Only day_of_month alone can rule out every day: a weekday occurs every month.
        if self._day_or or self.day_of_month == "*":
            return
        longest = max(_LONGEST_MONTH[month] for month in self._months)
        if min(self._days_of_month) > longest:
            raise ScheduleError(
                f"crontab never runs: day_of_month {self.day_of_month!r} does not occur "
                f"in month_of_year {self.month_of_year!r}"
            )

    @classmethod
    def from_string(cls, expression: str, tz: TimeZone | None = None) -> crontab:
        """A crontab from a cron line's five fields, in cron's order.

        ``crontab.from_string("*/5 9-17 * * mon-fri")`` reads minute, hour,
        day of month, month, day of week (the order of a crontab file, not of
        this class's arguments), as Celery's ``crontab.from_string`` does.
        Fields are separated by any run of spaces or tabs.
        """
        if not isinstance(expression, str):
            raise ScheduleError(f"crontab.from_string needs a string, got {expression!r}")
        fields = expression.split()
        if len(fields) != len(FIELD_NAMES):
            raise ScheduleError(
                f"crontab.from_string needs 5 fields (minute hour day_of_month month_of_year "
                f"day_of_week), got {len(fields)} in {expression!r}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    def __repr__(self) -> str:
        parts = [f"{name}={getattr(self, name)!r}" for name in FIELD_NAMES]
        parts = [part for part in parts if not part.endswith("='*'")]
        if self._tz_explicit or self.tz is not utc_zone():
            parts.append(f"tz={self.tz.key or self.tz!r}")
        return f"crontab({', '.join(parts)})"

    # -- zones

    def _in_zone(self, tz: TimeZone, explicit: bool) -> crontab:
        copy = crontab(
            self.minute, self.hour, self.day_of_week, self.day_of_month, self.month_of_year, tz=tz
        )
        object.__setattr__(copy, "_tz_explicit", explicit)
        return copy

    def with_tz(self, tz: TimeZone) -> crontab:
        """A copy whose fields are read in ``tz``; this becomes the schedule's own zone."""
        return self._in_zone(tz, explicit=True)

    def with_default_tz(self, tz: TimeZone) -> crontab:
        """A copy in ``tz`` (the app's timezone) unless ``tz=`` was given by the user."""
        return self if self._tz_explicit else self._in_zone(tz, explicit=False)

    # -- next run

    def next_run(self, after: datetime) -> datetime:
        """The first run strictly after ``after``, as an aware datetime in ``self.tz``."""
        after_utc = as_utc(after, "after")
        wall = after_utc.astimezone(self.tz).replace(tzinfo=None, second=0, microsecond=0, fold=0)
        cursor = wall + _MINUTE
        while True:
            candidate = self._next_wall_time(cursor)
            instant = _wall_to_instant(candidate, self.tz)
            if instant > after_utc:
                return instant.astimezone(self.tz)
            # Only when ``after`` lies in a repeated (fall-back) hour: the first
            # occurrence of this wall time has passed and the second never runs.
            cursor = candidate + _MINUTE

    def _next_wall_time(self, start: datetime) -> datetime:
        """The first naive wall time at or after ``start`` that matches every field.

        Each field that does not match jumps to its next allowed value and resets
        the smaller fields; a field with no value left rolls the larger one over.
        """
        year, month, day = start.year, start.month, start.day
        hour, minute = start.hour, start.minute
        for _ in range(_SEARCH_STEPS):
            if year > MAXYEAR:
                break
            next_month = next_in(self._months, month)
            if next_month is None:
                year, month, day, hour, minute = year + 1, 1, 1, 0, 0
                continue
            if next_month != month:
                month, day, hour, minute = next_month, 1, 0, 0
            next_day = self._next_day(year, month, day)
            if next_day is None:
                month, day, hour, minute = month + 1, 1, 0, 0
                continue
            if next_day != day:
                day, hour, minute = next_day, 0, 0
            next_hour = next_in(self._hours, hour)
            if next_hour is None:
                day, hour, minute = day + 1, 0, 0
                continue
            if next_hour != hour:
                hour, minute = next_hour, 0
            next_minute = next_in(self._minutes, minute)
            if next_minute is None:
                hour, minute = hour + 1, 0
                continue
            return datetime(year, month, day, hour, next_minute)
        raise ScheduleError(f"{self!r} has no run after {start.isoformat()} before year {MAXYEAR}")

    def _next_day(self, year: int, month: int, day: int) -> int | None:
        """The first matching day of the month at or after ``day``, or None."""
        first_weekday, length = calendar.monthrange(year, month)  # Monday is 0 here
        for candidate in range(day, length + 1):
            weekday = (first_weekday + candidate) % 7  # cron's numbering: Sunday is 0
            in_month = candidate in self._days_of_month
            in_week = weekday in self._days_of_week
            if (in_month or in_week) if self._day_or else (in_month and in_week):
                return candidate
        return None

    # -- storage

    def to_dict(self) -> dict[str, Any]:
        """The fields as text, and ``tz`` (None when the schedule follows the app's zone)."""
        if self._tz_explicit and not self.tz.key:
            raise ScheduleError(f"cannot store {self!r}: its zone has no IANA name")
        data: dict[str, Any] = {"type": self.type_name}
        data.update((name, getattr(self, name)) for name in FIELD_NAMES)
        data["tz"] = self.tz.key if self._tz_explicit else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> crontab:
        """The inverse of ``to_dict``; missing fields mean ``"*"``."""
        check_keys(data, cls.type_name, required=set(), allowed={*FIELD_NAMES, "tz"})
        minute, hour, day_of_week, day_of_month, month_of_year = (
            data.get(name, "*") for name in FIELD_NAMES
        )
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=data.get("tz"))
