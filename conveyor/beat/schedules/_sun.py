"""When the sun rises, sets, crosses the meridian or reaches a twilight depth.

The astronomy is PyEphem's (``pip install "conveyor[solar]"``), with the
definitions Celery's ``solar`` schedule uses, so the two agree to the second:

* sunrise and sunset: the sun's upper limb 34' below the horizon (refraction
  folded into the horizon, so no pressure model), as almanacs define them;
* civil, nautical and astronomical dawn and dusk: the sun's centre 6, 12 and
  18 degrees below the horizon;
* solar noon: the sun crossing the meridian.

Beat needs every process to compute the same instant for the same event (the
instant is part of a tick's identity), so events are never searched for from
an arbitrary moment.  Time is cut into *days* of local mean solar time at the
observer's longitude (midnight to midnight, roughly antitransit to
antitransit), each day's events are searched for from that day's own
midnight, and the results are rounded to the whole second.  The events of a
day are therefore a pure function of (event, latitude, longitude, day), and
are cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from conveyor.exceptions import ConveyorError

_UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_DAY = timedelta(days=1)
# Two events of one kind are hours apart; a minute past one is safely beyond it.
_PAST_EVENT = timedelta(minutes=1)
# PyEphem looks for an event only up to the sun's next lowest or highest point,
# and says "circumpolar" if there is none before it.  Near the edge of polar
# day an event can follow such a point by hours, so a day is searched from
# four fixed starting points, a quarter of a day apart.
_RETRY_STEP = timedelta(hours=6)


@dataclass(frozen=True)
class _Event:
    method: str  # the PyEphem Observer method that finds the next one
    horizon: str  # degrees:minutes, negative below the horizon
    use_center: bool  # the sun's centre (twilights) rather than its upper limb


#: Celery's events and their definitions (celery/schedules.py, class solar).
EVENTS: dict[str, _Event] = {
    "dawn_astronomical": _Event("next_rising", "-18", True),
    "dawn_nautical": _Event("next_rising", "-12", True),
    "dawn_civil": _Event("next_rising", "-6", True),
    "sunrise": _Event("next_rising", "-0:34", False),
    "solar_noon": _Event("next_transit", "0", False),
    "sunset": _Event("next_setting", "-0:34", False),
    "dusk_civil": _Event("next_setting", "-6", True),
    "dusk_nautical": _Event("next_setting", "-12", True),
    "dusk_astronomical": _Event("next_setting", "-18", True),
}


class SolarLibraryMissing(ConveyorError, ImportError):
    """PyEphem is not installed; the message says how to install it."""


def _ephem() -> Any:
    try:
        import ephem
    except ImportError as exc:
        raise SolarLibraryMissing(
            "solar schedules need PyEphem: pip install 'conveyor[solar]' (or 'ephem')"
        ) from exc
    return ephem


def check_library() -> None:
    """Raise :class:`SolarLibraryMissing` now rather than at the first tick."""
    _ephem()


def day_of(moment: datetime, lon: float) -> int:
    """The index of the local mean solar day at longitude ``lon`` containing ``moment``."""
    return (moment.astimezone(_UTC) - _day_start(0, lon)) // _DAY


def _day_start(day: int, lon: float) -> datetime:
    # Local mean midnight: UTC midnight moved by 4 minutes per degree of longitude.
    return _EPOCH + day * _DAY - timedelta(seconds=lon * 240.0)


@lru_cache(maxsize=8192)
def events_on(event: str, lat: float, lon: float, day: int) -> tuple[datetime, ...]:
    """Every ``event`` in local mean day ``day`` at (lat, lon), in UTC, oldest first.

    Usually one; none on a day of polar day or night (the sun never crosses
    that altitude), exceptionally two near the edge of such a season.  Every
    search starts from a moment fixed by the day (its midnight, or a quarter
    of it), never from the caller's clock, so every process gets the same answer.
    """
    ephem = _ephem()
    spec = EVENTS[event]
    start, end = _day_start(day, lon), _day_start(day + 1, lon)
    observer = ephem.Observer()
    observer.lat, observer.lon = str(lat), str(lon)
    observer.elev, observer.pressure, observer.horizon = 0, 0, spec.horizon
    found: list[datetime] = []
    cursor = start
    while cursor < end:
        try:
            when = _next(ephem, observer, spec, cursor)
        except ephem.CircumpolarError:  # none before the sun's next turning point
            cursor = start + ((cursor - start) // _RETRY_STEP + 1) * _RETRY_STEP
            continue
        if when >= end:
            break
        found.append(when)
        cursor = when + _PAST_EVENT
    return tuple(found)


def _next(ephem: Any, observer: Any, spec: _Event, start: datetime) -> datetime:
    moment = ephem.Date(start.astimezone(_UTC).replace(tzinfo=None))
    observer.date = moment
    find = getattr(observer, spec.method)
    if spec.use_center:
        found = find(ephem.Sun(), start=moment, use_center=True)
    else:
        found = find(ephem.Sun(), start=moment)
    exact = found.datetime().replace(tzinfo=_UTC)
    return _EPOCH + timedelta(seconds=round((exact - _EPOCH).total_seconds()))
