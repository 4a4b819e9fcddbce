"""What every schedule kind shares: the ``Schedule`` interface, its error, and time zones.

Every kind answers one question, ``next_run(after)``; everything else beat
asks (``is_due``, ``remaining_estimate``, ``ticks_between``) is derived from
it here, so the kinds cannot disagree.  All arithmetic is on aware datetimes
in UTC; naive ones are refused, because their instant is a guess.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from functools import cache
from typing import Any, ClassVar, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from conveyor.exceptions import ConveyorError

__all__ = ["Schedule", "ScheduleError", "TimeZone", "as_utc", "check_keys", "utc_zone", "zone_of"]

#: What a ``tz`` argument accepts: an IANA name such as ``"Asia/Kathmandu"`` or a ZoneInfo.
TimeZone: TypeAlias = str | ZoneInfo

_UTC = timezone.utc


class ScheduleError(ConveyorError, ValueError):
    """A schedule that cannot be built or asked: bad field, naive datetime, bad dict.

    Under ``ConveyorError`` like every Conveyor error; also a ``ValueError``
    because every cause is a bad value handed in by the caller.
    """


@cache
def utc_zone() -> ZoneInfo:
    # Built on first use, not at import: ZoneInfo needs tz data, and importing
    # this module must not fail on a machine that never uses a crontab.
    return ZoneInfo("UTC")


def zone_of(tz: object) -> ZoneInfo:
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


def as_utc(value: object, what: str) -> datetime:
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
    return datetime.now(_UTC) if now is None else as_utc(now, "now")


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
        end_utc = as_utc(end, "end")
        return self._ticks(self.next_run(start), end_utc)

    def _ticks(self, tick: datetime, end_utc: datetime) -> Iterator[datetime]:
        while tick.astimezone(_UTC) <= end_utc:
            yield tick
            tick = self.next_run(tick)



def check_keys(data: object, kind: str, *, required: set[str], allowed: set[str]) -> None:
    """Refuse stored schedules with missing or unknown keys instead of guessing."""
    if not isinstance(data, Mapping):
        raise ScheduleError(f"a stored {kind} schedule must be a dict, got {data!r}")
    keys = set(data) - {"type"}
    if missing := required - keys:
        raise ScheduleError(f"stored {kind} schedule is missing {sorted(missing)}: {data!r}")
    if unknown := keys - allowed:
        raise ScheduleError(f"stored {kind} schedule has unknown keys {sorted(unknown)}: {data!r}")

