"""When periodic tasks run: ``crontab`` (wall-clock times), ``schedule`` (intervals), ``solar``.

The first two kinds exist because users mean two different things:

* ``schedule(300)`` means "every five minutes, counted from the last run". It is
  arithmetic on absolute time, so daylight saving never stretches or shrinks an
  interval: across a spring-forward night an hourly interval still runs every
  3600 real seconds.
* ``crontab(minute=0, hour=9)`` means "at 09:00 on the clock on the wall". Its
  fields are matched against wall-clock time in the schedule's zone: ``tz=``,
  else the app's ``timezone`` setting (applied by ``as_schedule``), else UTC.

Daylight saving, the rule beat relies on (also in ``docs/periodic.md``):

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

``solar`` runs at sunrise, sunset, noon or a twilight at a place; the
astronomy lives in ``conveyor/_sun.py``.
"""

from __future__ import annotations

import bisect
import calendar
import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import MAXYEAR, datetime, timedelta, timezone
from functools import cache
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor.exceptions import ConveyorError

__all__ = [
    "CronField",
    "Schedule",
    "ScheduleError",
    "TimeZone",
    "as_schedule",
    "crontab",
    "crontab_parser",
    "schedule",
    "schedule_from_dict",
    "solar",
]

#: What a crontab field accepts: an expression such as ``"*/15"``, one int, or ints.
CronField: TypeAlias = str | int | Iterable[int]
#: What a ``tz`` argument accepts: an IANA name such as ``"Asia/Kathmandu"`` or a ZoneInfo.
TimeZone: TypeAlias = str | ZoneInfo

_UTC = timezone.utc
_MINUTE = timedelta(minutes=1)
# Beyond any real schedule, but bounds the search should the field logic ever be wrong.
_SEARCH_STEPS = 100_000
_FIELD_NAMES = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
# The longest each month can be, so an impossible date ("31 February") is refused
# when the crontab is built instead of sending next_run on an endless search.
_LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30,
                  7: 31, 8: 31, 9: 30, 10: 31, 11: 30, 12: 31}  # fmt: skip


class ScheduleError(ConveyorError, ValueError):
    """A schedule that cannot be built or asked: bad field, naive datetime, bad dict.

    Under ``ConveyorError`` like every Conveyor error; also a ``ValueError``
    because every cause is a bad value handed in by the caller.
    """


@cache
def _utc_zone() -> ZoneInfo:
    # Built on first use, not at import: ZoneInfo needs tz data, and importing
    # this module must not fail on a machine that never uses a crontab.
    return ZoneInfo("UTC")


def _zone(tz: object) -> ZoneInfo:
    """Turn a ``tz`` argument into a ZoneInfo, naming the value when it is not one."""
    if isinstance(tz, ZoneInfo):
        # The cached instance, so that two crontabs in the same zone compare equal.
        return ZoneInfo(tz.key) if tz.key else tz
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
            raise ScheduleError(f"unknown time zone {tz!r}") from exc
    raise ScheduleError(f"tz must be an IANA zone name or a zoneinfo.ZoneInfo, got {tz!r}")


def _as_utc(value: object, what: str) -> datetime:
    """``value`` in UTC; refuses naive datetimes, whose instant is a guess."""
    if not isinstance(value, datetime):
        raise ScheduleError(f"{what} must be a datetime, got {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ScheduleError(
            f"{what} must be an aware datetime, got naive {value.isoformat()}; "
            "attach a zone, e.g. datetime.now(timezone.utc)"
        )
    # Comparing or subtracting aware datetimes that share a tzinfo uses their wall
    # times, which is wrong across a DST change; all arithmetic here is in UTC.
    return value.astimezone(_UTC)


def _now(now: datetime | None) -> datetime:
    return datetime.now(_UTC) if now is None else _as_utc(now, "now")


class Schedule(ABC):
    """What beat asks of a schedule. Subclasses provide ``next_run`` and storage.

    Everything else (``is_due``, ``remaining_estimate``, ``ticks_between``) is
    derived from ``next_run`` so that the kinds of schedule cannot disagree.
    """

    type_name: ClassVar[str]

    @abstractmethod
    def next_run(self, after: datetime) -> datetime:
        """The first run strictly after ``after`` (an aware datetime)."""

    @abstractmethod
    def with_tz(self, tz: TimeZone) -> Schedule:
        """A copy that reads its times in ``tz``, overriding any zone it had."""

    def with_default_tz(self, tz: TimeZone) -> Schedule:
        """A copy in ``tz`` unless the schedule chose its own zone.

        The app calls this with its ``timezone`` setting, so a ``tz=`` given by
        the user wins. Schedules that do not read wall-clock time return self.
        """
        return self

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that ``schedule_from_dict`` turns back into an equal schedule."""

    def remaining_estimate(self, last_run_at: datetime, now: datetime | None = None) -> timedelta:
        """Time from ``now`` until the run after ``last_run_at``; zero or less when overdue."""
        return self.next_run(last_run_at).astimezone(_UTC) - _now(now)

    def is_due(self, last_run_at: datetime, now: datetime | None = None) -> tuple[bool, float]:
        """``(due, seconds)``: is a run due now, and how long may the caller sleep.

        When a run is due, ``seconds`` counts to the run that follows it, which is
        zero if that one is overdue too. Counting from the due run, not from now,
        means a caller that works through missed runs one at a time is never told
        to sleep past one of them.
        """
        now_utc = _now(now)
        due_at = self.next_run(last_run_at).astimezone(_UTC)
        if due_at > now_utc:
            return False, (due_at - now_utc).total_seconds()
        following = self.next_run(due_at).astimezone(_UTC)
        return True, max(0.0, (following - now_utc).total_seconds())

    def ticks_between(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every run in ``(start, end]``, in order; beat uses each one as a tick's identity."""
        # Not a generator itself, so that bad arguments fail at the call.
        end_utc = _as_utc(end, "end")
        return self._ticks(self.next_run(start), end_utc)

    def _ticks(self, tick: datetime, end_utc: datetime) -> Iterator[datetime]:
        while tick.astimezone(_UTC) <= end_utc:
            yield tick
            tick = self.next_run(tick)


# --------------------------------------------------------------------------- interval


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
        moment = _as_utc(after, "after") + self.run_every
        return moment.astimezone(after.tzinfo)

    def with_tz(self, tz: TimeZone) -> schedule:
        """Self: an interval reads no clock, so a zone changes nothing (it is still checked)."""
        _zone(tz)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "interval", "seconds": 300.0}``."""
        return {"type": self.type_name, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> schedule:
        """The inverse of ``to_dict``."""
        _check_keys(data, cls.type_name, required={"seconds"}, allowed={"seconds"})
        return cls(data["seconds"])


# --------------------------------------------------------------------------- crontab fields


@dataclass(frozen=True)
class _FieldSpec:
    """How one crontab field is spelled and which values it allows."""

    name: str
    low: int
    high: int  # what "*" covers
    accepted_high: int  # may exceed ``high``: day_of_week takes 7 for Sunday
    names: Mapping[str, int]
    name_hint: str = ""

    def error(self, detail: str) -> ScheduleError:
        return ScheduleError(f"crontab field {self.name!r}: {detail}")

    def canonical(self, value: int) -> int:
        # Sunday is both 0 and 7 in cron; store 0 so the two compare equal.
        return 0 if value > self.high else value

    def check(self, value: int, source: str) -> int:
        if not self.low <= value <= self.accepted_high:
            raise self.error(
                f"{value} is out of range {self.low}-{self.accepted_high}{_within(value, source)}"
            )
        return value

    def value(self, token: str, source: str) -> int:
        """One number or name from an expression, checked against the range."""
        token = token.strip()
        if token.isascii() and token.isdigit():
            return self.check(int(token), source)
        if token.lower() in self.names:
            return self.names[token.lower()]
        raise self.error(f"{token!r} is not a number{self.name_hint}{_within(token, source)}")


def _within(bad: object, source: str) -> str:
    """`` in '1,25'`` when the bad piece is only part of what the user wrote."""
    return "" if str(bad) == source else f" in {source!r}"


def _names(short: tuple[str, ...], long: tuple[str, ...], first: int) -> dict[str, int]:
    table = {name: i for i, name in enumerate(short, start=first)}
    table.update({name: i for i, name in enumerate(long, start=first)})
    return table


_DAY_NAMES = _names(
    ("sun", "mon", "tue", "wed", "thu", "fri", "sat"),
    ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"),
    first=0,
)
_MONTH_NAMES = _names(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
    ("january", "february", "march", "april", "may", "june", "july", "august",
     "september", "october", "november", "december"),
    first=1,
)  # fmt: skip

_SPECS = {
    "minute": _FieldSpec("minute", 0, 59, 59, {}),
    "hour": _FieldSpec("hour", 0, 23, 23, {}),
    "day_of_week": _FieldSpec("day_of_week", 0, 6, 7, _DAY_NAMES, " or a day name (sun..sat)"),
    "day_of_month": _FieldSpec("day_of_month", 1, 31, 31, {}),
    "month_of_year": _FieldSpec(
        "month_of_year", 1, 12, 12, _MONTH_NAMES, " or a month name (jan..dec)"
    ),
}


def _parse_field(spec: _FieldSpec, value: object) -> tuple[str, frozenset[int]]:
    """``(source text, allowed values)`` for one field; the text is kept for repr and storage."""
    if isinstance(value, bool):
        raise spec.error(f"{value!r} is not a cron expression")
    if isinstance(value, int):
        return str(value), frozenset({spec.canonical(spec.check(value, str(value)))})
    if isinstance(value, str):
        text = value.strip()
        return text, _parse_text(spec, text)
    if isinstance(value, Iterable) and not isinstance(value, (bytes, bytearray)):
        return _parse_iterable(spec, value)
    raise spec.error(
        f"{value!r} is not a cron expression (expected a string, an int or a set of ints)"
    )


def _parse_iterable(spec: _FieldSpec, items: Iterable[object]) -> tuple[str, frozenset[int]]:
    numbers: set[int] = set()
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise spec.error(f"{item!r} is not an int")
        numbers.add(spec.check(item, str(item)))
    if not numbers:
        raise spec.error("an empty set of values would never match")
    ordered = sorted(numbers)
    return ",".join(map(str, ordered)), frozenset(spec.canonical(v) for v in ordered)


def _parse_text(spec: _FieldSpec, text: str) -> frozenset[int]:
    if not text:
        raise spec.error("empty expression")
    values: set[int] = set()
    for part in text.split(","):
        values.update(_parse_part(spec, part.strip(), text))
    return frozenset(values)


def _parse_part(spec: _FieldSpec, part: str, text: str) -> list[int]:
    """One comma-separated piece: ``*``, ``5``, ``1-5``, ``mon-fri``, ``*/15``, ``1-9/2``, ``5/6``.

    A reversed range wraps around; a stepped single value runs to the top of the field.
    """
    base, slash, step_text = part.partition("/")
    step = _parse_step(spec, step_text, text) if slash else 1
    if base.strip() == "*":
        first, last = spec.low, spec.high
    elif "-" in base:
        left, _, right = base.partition("-")
        first, last = spec.value(left, text), spec.value(right, text)
    else:
        first = spec.value(base, text)
        # "5/15" is cron shorthand for "5-59/15": from the value to the top.
        last = spec.high if slash else first
    return [spec.canonical(v) for v in _span(spec, first, last)[::step]]


def _parse_step(spec: _FieldSpec, step_text: str, text: str) -> int:
    step_text = step_text.strip()
    if not (step_text.isascii() and step_text.isdigit()):
        raise spec.error(f"{step_text!r} is not a valid step in {text!r}")
    if int(step_text) < 1:
        raise spec.error(f"step must be at least 1, got {step_text} in {text!r}")
    return int(step_text)


def _span(spec: _FieldSpec, first: int, last: int) -> list[int]:
    """Values from first to last; a reversed range wraps around (``fri-mon``), as in Celery."""
    if first <= last:
        return list(range(first, last + 1))
    if first > spec.high:  # "7-2": Sunday written as 7 starts the week
        return list(range(spec.low, last + 1))
    return list(range(first, spec.high + 1)) + list(range(spec.low, last + 1))


class crontab_parser:  # lower case: Celery's spelling
    """Celery's stand-alone field parser: ``crontab_parser(60).parse("*/15") == {0, 15, 30, 45}``.

    Values run from ``min_`` to ``min_ + max_ - 1`` (``crontab_parser(31, 1)``
    for days of the month); day and month names are read in any field, as in
    Celery.  The syntax is the crontab fields' own; a bad expression raises
    ``ScheduleError``, also reachable as ``crontab_parser.ParseException``.
    """

    ParseException = ScheduleError

    def __init__(self, max_: int = 60, min_: int = 0) -> None:
        if isinstance(max_, bool) or not isinstance(max_, int) or max_ < 1:
            raise ScheduleError(f"crontab_parser max_ must be a positive int, got {max_!r}")
        top = min_ + max_ - 1
        self._spec = _FieldSpec("expression", min_, top, top, {**_DAY_NAMES, **_MONTH_NAMES})

    def parse(self, spec: str) -> set[int]:
        """The values ``spec`` names, e.g. ``"1-5,*/20"``."""
        if not isinstance(spec, str):
            raise self._spec.error(f"{spec!r} is not a cron expression")
        return set(_parse_text(self._spec, spec.strip()))


def _next_in(values: tuple[int, ...], at_least: int) -> int | None:
    """The smallest allowed value >= ``at_least``, or None when the field must roll over."""
    index = bisect.bisect_left(values, at_least)
    return values[index] if index < len(values) else None


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
            name: _parse_field(_SPECS[name], value)
            for name, value in zip(_FIELD_NAMES, raw, strict=True)
        }
        set_ = object.__setattr__  # the dataclass is frozen; this is its only writer
        for name, (text, _) in parsed.items():
            set_(self, name, text)
        set_(self, "tz", _utc_zone() if tz is None else _zone(tz))
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
        if len(fields) != len(_FIELD_NAMES):
            raise ScheduleError(
                f"crontab.from_string needs 5 fields (minute hour day_of_month month_of_year "
                f"day_of_week), got {len(fields)} in {expression!r}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    def __repr__(self) -> str:
        parts = [f"{name}={getattr(self, name)!r}" for name in _FIELD_NAMES]
        parts = [part for part in parts if not part.endswith("='*'")]
        if self._tz_explicit or self.tz is not _utc_zone():
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
        after_utc = _as_utc(after, "after")
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
            next_month = _next_in(self._months, month)
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
            next_hour = _next_in(self._hours, hour)
            if next_hour is None:
                day, hour, minute = day + 1, 0, 0
                continue
            if next_hour != hour:
                hour, minute = next_hour, 0
            next_minute = _next_in(self._minutes, minute)
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
        data.update((name, getattr(self, name)) for name in _FIELD_NAMES)
        data["tz"] = self.tz.key if self._tz_explicit else None
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> crontab:
        """The inverse of ``to_dict``; missing fields mean ``"*"``."""
        _check_keys(data, cls.type_name, required=set(), allowed={*_FIELD_NAMES, "tz"})
        minute, hour, day_of_week, day_of_month, month_of_year = (
            data.get(name, "*") for name in _FIELD_NAMES
        )
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=data.get("tz"))


# --------------------------------------------------------------------------- solar

# The longest run of days without a given event anywhere on Earth is under a
# year (polar night at a pole); two years bounds the search with room to spare.
_SOLAR_SEARCH_DAYS = 2 * 366


def _degrees(value: object, what: str, limit: int) -> float:
    """A latitude or longitude as a float (Decimal from the database is fine), range-checked."""
    if isinstance(value, bool):
        raise ScheduleError(f"{what} must be a number of degrees, got {value!r}")
    try:
        degrees = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ScheduleError(f"{what} must be a number of degrees, got {value!r}") from exc
    if not -limit <= degrees <= limit:
        raise ScheduleError(f"{what} must be between -{limit} and {limit}, got {value!r}")
    return degrees


@dataclass(frozen=True, init=False, repr=False)
class solar(Schedule):  # lower case: Celery's spelling, so imports move unchanged
    """Run at a solar event at a place: ``solar("sunset", 59.91, 10.75)`` (Oslo).

    Events (Celery's): ``dawn_astronomical``, ``dawn_nautical``, ``dawn_civil``,
    ``sunrise``, ``solar_noon``, ``sunset``, ``dusk_civil``, ``dusk_nautical``,
    ``dusk_astronomical``.  Latitude is north positive, longitude east positive.
    Needs PyEphem (``pip install "conveyor[solar]"``); the definitions are in
    ``conveyor/_sun.py``.

    On days when the event does not happen (polar day or night) there is no
    run: the next run is the next day the event happens.  Celery instead
    wakes a minute after the sun's lowest point and runs the task then.
    Times are instants, so the schedule has no zone and ``with_tz`` is a no-op.
    """

    type_name: ClassVar[str] = "solar"
    event: str
    lat: float
    lon: float

    def __init__(self, event: str, lat: float, lon: float) -> None:
        from conveyor import _sun

        if event not in _sun.EVENTS:
            raise ScheduleError(
                f"unknown solar event {event!r}; expected one of {', '.join(sorted(_sun.EVENTS))}"
            )
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "lat", _degrees(lat, "latitude", 90))
        object.__setattr__(self, "lon", _degrees(lon, "longitude", 180))
        _sun.check_library()

    def __repr__(self) -> str:
        return f"solar({self.event!r}, {self.lat!r}, {self.lon!r})"

    def next_run(self, after: datetime) -> datetime:
        """The first occurrence of the event strictly after ``after``, in UTC."""
        from conveyor import _sun

        after_utc = _as_utc(after, "after")
        first = _sun.day_of(after_utc, self.lon)
        for day in range(first, first + _SOLAR_SEARCH_DAYS):
            for moment in _sun.events_on(self.event, self.lat, self.lon, day):
                if moment > after_utc:
                    return moment
        raise ScheduleError(f"{self!r} does not occur within two years of {after.isoformat()}")

    def with_tz(self, tz: TimeZone) -> solar:
        """Self: solar events are instants, not wall-clock times (the zone is still checked)."""
        _zone(tz)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "solar", "event": "sunset", "lat": 59.91, "lon": 10.75}``."""
        return {"type": self.type_name, "event": self.event, "lat": self.lat, "lon": self.lon}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> solar:
        """The inverse of ``to_dict``."""
        keys = {"event", "lat", "lon"}
        _check_keys(data, cls.type_name, required=keys, allowed=keys)
        return cls(data["event"], data["lat"], data["lon"])


# --------------------------------------------------------------------------- helpers

_KINDS: dict[str, type[schedule] | type[crontab] | type[solar]] = {
    schedule.type_name: schedule,
    crontab.type_name: crontab,
    solar.type_name: solar,
}


def _check_keys(data: object, kind: str, *, required: set[str], allowed: set[str]) -> None:
    """Refuse stored schedules with missing or unknown keys instead of guessing."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"a stored {kind} schedule must be a dict, got {data!r}")
    keys = set(data) - {"type"}
    if missing := required - keys:
        raise ScheduleError(f"stored {kind} schedule is missing {sorted(missing)}: {data!r}")
    if unknown := keys - allowed:
        raise ScheduleError(f"stored {kind} schedule has unknown keys {sorted(unknown)}: {data!r}")


def schedule_from_dict(data: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule stored with ``to_dict``, choosing the kind by its ``"type"``."""
    kind = data.get("type") if isinstance(data, Mapping) else None
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ScheduleError(
            f"stored schedule has unknown type {kind!r} (expected one of {sorted(_KINDS)}): "
            f"{data!r}"
        )
    return _KINDS[kind].from_dict(data)


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
