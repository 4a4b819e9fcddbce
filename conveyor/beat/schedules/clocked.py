"""``clocked``: once, at a given instant (django-celery-beat's ``ClockedSchedule``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import MAXYEAR, datetime, timezone
from typing import Any, ClassVar

from conveyor.beat.schedules.base import Schedule, ScheduleError, TimeZone, check_keys

__all__ = ["NEVER", "clocked"]

_UTC = timezone.utc
#: What a spent one-shot schedule answers for "next run": later than anything real.
NEVER = datetime(MAXYEAR, 12, 31, tzinfo=_UTC)


@dataclass(frozen=True)
class clocked(Schedule):  # lower case, like schedule and crontab
    """Once, at ``clocked_time``; after that, never."""

    type_name: ClassVar[str] = "clocked"
    clocked_time: datetime

    def __post_init__(self) -> None:
        when = self.clocked_time
        if not isinstance(when, datetime) or when.tzinfo is None:
            raise ScheduleError(f"clocked_time must be an aware datetime, got {when!r}")
        object.__setattr__(self, "clocked_time", when.astimezone(_UTC))

    def next_run(self, after: datetime) -> datetime:
        if after.tzinfo is None:
            raise ScheduleError(f"after must be an aware datetime, got {after!r}")
        return self.clocked_time if after < self.clocked_time else NEVER

    def with_tz(self, tz: TimeZone) -> clocked:
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "clocked", "clocked_time": "2030-01-01T09:00:00+00:00"}``."""
        return {"type": self.type_name, "clocked_time": self.clocked_time.isoformat()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> clocked:
        """The inverse of ``to_dict``."""
        check_keys(data, cls.type_name, required={"clocked_time"}, allowed={"clocked_time"})
        try:
            when = datetime.fromisoformat(data["clocked_time"])
        except (TypeError, ValueError) as exc:
            raise ScheduleError(f"stored clocked schedule has a bad time: {data!r}") from exc
        return cls(when)
