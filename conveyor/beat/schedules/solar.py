"""``solar``: at sunrise, sunset, noon or a twilight at a place (astronomy in ``_sun.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from conveyor.beat.schedules import _sun
from conveyor.beat.schedules.base import (
    Schedule,
    ScheduleError,
    TimeZone,
    as_utc,
    check_keys,
    zone_of,
)

__all__ = ["solar"]

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
    ``conveyor/beat/schedules/_sun.py``.

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
        after_utc = as_utc(after, "after")
        first = _sun.day_of(after_utc, self.lon)
        for day in range(first, first + _SOLAR_SEARCH_DAYS):
            for moment in _sun.events_on(self.event, self.lat, self.lon, day):
                if moment > after_utc:
                    return moment
        raise ScheduleError(f"{self!r} does not occur within two years of {after.isoformat()}")

    def with_tz(self, tz: TimeZone) -> solar:
        """Self: solar events are instants, not wall-clock times (the zone is still checked)."""
        zone_of(tz)
        return self

    def to_dict(self) -> dict[str, Any]:
        """``{"type": "solar", "event": "sunset", "lat": 59.91, "lon": 10.75}``."""
        return {"type": self.type_name, "event": self.event, "lat": self.lat, "lon": self.lon}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> solar:
        """The inverse of ``to_dict``."""
        keys = {"event", "lat", "lon"}
        check_keys(data, cls.type_name, required=keys, allowed=keys)
        return cls(data["event"], data["lat"], data["lon"])
