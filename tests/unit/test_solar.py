"""``solar`` schedules, and Celery's ``crontab.from_string`` and ``crontab_parser``.

Solar times are checked against published almanac tables (the U.S. Naval
Observatory's, which round to the minute) with a tolerance of a minute, and
the next-run arithmetic across day boundaries and polar day and night.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from conveyor.beat.schedules import _sun
from conveyor.schedules import ScheduleError, crontab, crontab_parser, schedule_from_dict, solar

UTC = timezone.utc
TOLERANCE = timedelta(seconds=60)

# Latitude, longitude (east positive) and the zone the table's times are in.
CUPERTINO = (37 + 24 / 60, -(121 + 55 / 60), timezone(timedelta(hours=-8)))
CLEVELAND = (41 + 29 / 60, -(81 + 40 / 60), ZoneInfo("America/New_York"))
AUGUSTA = (44.3106, -69.7795, timezone(timedelta(hours=-5)))


def _next_after_midnight(event: str, place: tuple[float, float, object], day: str) -> datetime:
    lat, lon, zone = place
    midnight = datetime.fromisoformat(day).replace(tzinfo=zone)  # type: ignore[arg-type]
    return solar(event, lat, lon).next_run(midnight).astimezone(zone)  # type: ignore[arg-type]


@pytest.mark.parametrize(("day", "rise", "set_"), [
    ("2008-01-01", "07:22", "17:00"),
    ("2008-03-02", "06:37", "18:03"),
    ("2008-06-01", "04:48", "19:23"),
    ("2008-07-04", "04:52", "19:32"),
    ("2008-12-03", "07:06", "16:50"),
])
def test_cupertino_matches_the_naval_observatory_table(day: str, rise: str, set_: str) -> None:
    """U.S. Naval Observatory, Astronomical Applications Dept., "Rise and Set for the Sun
    for 2008", W121 55 N37 24, zone 8h west of Greenwich (the one-year table, as
    reproduced at khuang.blogspot.com/2008/09).

    Celery: schedules.py solar uses the same definitions (upper limb 34' below the horizon).
    """
    for event, expected in (("sunrise", rise), ("sunset", set_)):
        got = _next_after_midnight(event, CUPERTINO, day)
        want = datetime.fromisoformat(f"{day}T{expected}").replace(tzinfo=got.tzinfo)
        assert abs(got - want) <= TOLERANCE, (event, day, got)


@pytest.mark.parametrize(("day", "rise", "set_"), [
    ("2018-12-21", "07:50", "17:00"),
    ("2019-06-21", "05:53", "21:04"),
])
def test_cleveland_matches_the_naval_observatory(day: str, rise: str, set_: str) -> None:
    """U.S. Naval Observatory times for Cleveland, Ohio (W81 40 N41 29), local clock time
    (EST in December, EDT in June), as published by cleveland.com (Dec. 2018) citing USNO."""
    for event, expected in (("sunrise", rise), ("sunset", set_)):
        got = _next_after_midnight(event, CLEVELAND, day)
        want = datetime.fromisoformat(f"{day}T{expected}").replace(tzinfo=got.tzinfo)
        assert abs(got - want) <= TOLERANCE, (event, day, got)


@pytest.mark.parametrize(("day", "rise", "set_"), [
    ("2001-12-21", "07:11", "16:02"),
    ("2001-06-21", "03:55", "19:26"),
])
def test_augusta_matches_the_published_solstice_times(day: str, rise: str, set_: str) -> None:
    """Augusta, Maine, solstice sunrise and sunset of 2001 in Eastern Standard Time, as
    tabulated (from the Naval Observatory's figures) in H. Bouchelle's "Sunrise and Sunset"."""
    for event, expected in (("sunrise", rise), ("sunset", set_)):
        got = _next_after_midnight(event, AUGUSTA, day)
        want = datetime.fromisoformat(f"{day}T{expected}").replace(tzinfo=got.tzinfo)
        assert abs(got - want) <= TOLERANCE, (event, day, got)


def test_twilights_and_noon_come_in_order_through_a_day() -> None:
    """Celery: schedules.py solar: the dawns are the sun's centre 18, 12 and 6 degrees below
    the horizon before sunrise, the dusks the same after sunset; solar_noon the transit."""
    lat, lon, _ = CUPERTINO
    midnight = datetime(2008, 3, 2, 8, tzinfo=UTC)
    order = ["dawn_astronomical", "dawn_nautical", "dawn_civil", "sunrise", "solar_noon",
             "sunset", "dusk_civil", "dusk_nautical", "dusk_astronomical"]
    times = [solar(event, lat, lon).next_run(midnight) for event in order]
    assert times == sorted(times)
    assert times[-1] - times[0] < timedelta(hours=24)
    # Civil twilight lasts about half an hour at this latitude in March.
    assert timedelta(minutes=20) < times[3] - times[2] < timedelta(minutes=35)
    # Solar noon at 121.9 W is near 20:08 UTC in early March (equation of time -12 min).
    assert abs(times[4] - datetime(2008, 3, 2, 20, 20, tzinfo=UTC)) < timedelta(minutes=3)


def test_next_run_crosses_the_day_boundary() -> None:
    """After today's sunset, the next run is tomorrow's sunset, about a day later; exactly at
    the event the next run is the following day's (strictly after, as Celery's next_setting)."""
    oslo = solar("sunset", 59.91, 10.75)
    today = oslo.next_run(datetime(2026, 3, 1, tzinfo=UTC))
    tomorrow = oslo.next_run(today)
    assert today.date().isoformat() == "2026-03-01"
    assert tomorrow.date().isoformat() == "2026-03-02"
    # In March Oslo's days lengthen by about four minutes a day, sunset moving ~2 min later.
    assert timedelta(hours=24) < tomorrow - today < timedelta(hours=24, minutes=4)
    assert oslo.next_run(today - timedelta(seconds=1)) == today
    # A run at 23:59 local finds tomorrow's, not a stale one.
    late = datetime(2026, 3, 1, 23, 59, tzinfo=ZoneInfo("Europe/Oslo"))
    assert oslo.next_run(late) == tomorrow


def test_tokyo_sunrise_falls_on_the_previous_utc_day() -> None:
    """Far east of Greenwich the local morning is the previous UTC evening: the event
    belongs to the local day, and next_run still returns the first one after ``after``."""
    tokyo = solar("sunrise", 35.68, 139.69)
    run = tokyo.next_run(datetime(2026, 6, 1, 12, tzinfo=UTC))
    local = run.astimezone(ZoneInfo("Asia/Tokyo"))
    assert run.date().isoformat() == "2026-06-01" and run.hour == 19
    assert local.date().isoformat() == "2026-06-02" and 4 <= local.hour < 5


def test_polar_night_skips_to_the_first_sunrise() -> None:
    """Longyearbyen (78.22 N) has no sunrise from late October to mid-February. Celery wakes a
    minute after the sun's lowest point and runs the task then (schedules.py solar
    remaining_estimate on CircumpolarError); Conveyor has no run until the sun rises."""
    svalbard = solar("sunrise", 78.22, 15.65)
    first = svalbard.next_run(datetime(2026, 12, 1, tzinfo=UTC))
    assert datetime(2027, 2, 14, tzinfo=UTC) < first < datetime(2027, 2, 18, tzinfo=UTC)
    # The next one is the next day: the sun rises every day from then on.
    assert svalbard.next_run(first) - first < timedelta(hours=25)


def test_midnight_sun_skips_to_the_first_sunset() -> None:
    """The first sunset after the midnight sun comes just before local midnight, near the
    sun's lowest point: it is found (PyEphem alone, asked from midnight, misses it)."""
    svalbard = solar("sunset", 78.22, 15.65)
    first = svalbard.next_run(datetime(2026, 6, 21, tzinfo=UTC))
    assert first.isoformat() == "2026-08-24T22:28:06+00:00"


def test_the_same_event_from_any_moment_is_the_same_instant() -> None:
    """Beat uses the tick as its identity, so every process must get identical instants."""
    oslo = solar("dusk_nautical", 59.91, 10.75)
    event = oslo.next_run(datetime(2026, 5, 1, tzinfo=UTC))
    assert event.microsecond == 0
    previous = event - timedelta(hours=23, minutes=50)  # the day before's is earlier still
    starts = [previous + timedelta(hours=h, seconds=s) for h in range(0, 24, 3) for s in (1, 7)]
    assert {oslo.next_run(start) for start in starts if start < event} == {event}


def test_bad_arguments_are_refused_by_name() -> None:
    """Celery: schedules.py solar raises ValueError for an unknown event or a bad lat/lon."""
    with pytest.raises(ScheduleError, match="unknown solar event 'sunrize'"):
        solar("sunrize", 0, 0)
    with pytest.raises(ValueError, match="latitude must be between -90 and 90"):
        solar("sunrise", 91, 0)
    with pytest.raises(ValueError, match="longitude must be between -180 and 180"):
        solar("sunrise", 0, -181)
    with pytest.raises(ScheduleError, match="latitude must be a number"):
        solar("sunrise", "north", 0)  # type: ignore[arg-type]


def test_storage_repr_equality_and_pickle() -> None:
    oslo = solar("sunset", 59.91, 10.75)
    assert schedule_from_dict(oslo.to_dict()) == oslo
    assert pickle.loads(pickle.dumps(oslo)) == oslo
    assert repr(oslo) == "solar('sunset', 59.91, 10.75)"
    assert oslo != solar("sunrise", 59.91, 10.75)
    assert oslo.with_tz("Asia/Tokyo") is oslo
    due, _ = oslo.is_due(datetime(2026, 3, 1, tzinfo=UTC), now=datetime(2026, 3, 2, tzinfo=UTC))
    assert due


def test_a_missing_library_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_ephem(name: str, *args: object, **kwargs: object) -> object:
        if name == "ephem":
            raise ImportError("No module named 'ephem'")
        return real(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_ephem)
    with pytest.raises(_sun.SolarLibraryMissing, match=r"conveyor\[solar\]"):
        solar("sunrise", 0, 0)


# --------------------------------------------------------------------------- from_string


def test_from_string_reads_cron_order() -> None:
    """Celery: schedules.py crontab.from_string splits "minute hour day_of_month
    month_of_year day_of_week" (a crontab line's order, not the constructor's)."""
    parsed = crontab.from_string("*/5 9-17 1,15 jan-jun mon-fri")
    assert parsed == crontab(minute="*/5", hour="9-17", day_of_month="1,15",
                             month_of_year="jan-jun", day_of_week="mon-fri")
    assert crontab.from_string("*/5 * * * *") == crontab(minute="*/5")
    assert crontab.from_string("0  3\t* * *") == crontab(minute=0, hour=3)
    zoned = crontab.from_string("0 9 * * *", tz="Asia/Kathmandu")
    assert zoned == crontab(minute=0, hour=9, tz="Asia/Kathmandu")


def test_from_string_refuses_the_wrong_number_of_fields() -> None:
    with pytest.raises(ScheduleError, match=r"needs 5 fields .* got 6 in '0 0 \* \* \* 2026'"):
        crontab.from_string("0 0 * * * 2026")
    with pytest.raises(ScheduleError, match="got 1"):
        crontab.from_string("@daily")
    with pytest.raises(ScheduleError, match="field 'hour': 24 is out of range"):
        crontab.from_string("0 24 * * *")


def test_crontab_parser_as_celerys() -> None:
    """Celery: schedules.py crontab_parser(max_, min_).parse expands one field to a set."""
    assert crontab_parser(60).parse("*/15") == {0, 15, 30, 45}
    assert crontab_parser(24).parse("*/4") == {0, 4, 8, 12, 16, 20}
    assert crontab_parser(7).parse("*") == set(range(7))
    assert crontab_parser(31, 1).parse("*/3") == set(range(1, 32, 3))
    assert crontab_parser(12, 1).parse("2-12/2") == {2, 4, 6, 8, 10, 12}
    assert crontab_parser(7).parse("mon-wed,fri") == {1, 2, 3, 5}
    assert crontab_parser(12, 1).parse("nov-feb") == {11, 12, 1, 2}
    with pytest.raises(crontab_parser.ParseException, match="60 is out of range 0-59"):
        crontab_parser(60).parse("60")
    with pytest.raises(ValueError, match="empty expression"):
        crontab_parser(60).parse("")


def test_beat_plans_solar_ticks_across_days_and_outages() -> None:
    """Beat's planner on a solar schedule: the tick after yesterday's sunset is today's, and
    after an outage the missed sunsets follow beat_missed_policy like any other ticks."""
    from conveyor.beat import plan_ticks

    oslo = solar("sunset", 59.91, 10.75)
    day1 = oslo.next_run(datetime(2026, 3, 1, tzinfo=UTC))
    day2, day3 = oslo.next_run(day1), oslo.next_run(oslo.next_run(day1))
    window = timedelta(seconds=30)
    plan = plan_ticks(oslo, last=day1, now=day2 + timedelta(seconds=1), cutoff=None,
                      window=window)
    assert plan.send == (day2,) and plan.wake == day3 and not plan.dropped
    back = day1 + timedelta(days=4, hours=1)  # beat was down for four sunsets
    once = plan_ticks(oslo, last=day1, now=back, cutoff=back, window=window, policy="once")
    assert len(once.send) == 1 and once.dropped and once.send[0] < back
    every = plan_ticks(oslo, last=day1, now=back, cutoff=back, window=window, policy="all")
    assert len(every.send) == 4 and every.send[0] == day2
