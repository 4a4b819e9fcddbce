"""Beat data as django-celery-beat stores it: intervals in seconds (and the migration that
moves old rows), solar schedules, ``PeriodicTask.objects.enabled()``, the admin actions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.test import Client
from django.urls import reverse

from conveyor._message import Message
from conveyor.contrib.django.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
)
from conveyor.contrib.django.schedulers import DatabaseScheduler, clocked
from conveyor.schedules import ScheduleError, crontab, schedule, solar
from tests.django.conftest import Processes, wait_for

UTC = timezone.utc
ADD = "tests.django.testapp.tasks.add"


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(("value", "stored"), [
    (300, (300, "seconds")),
    (timedelta(minutes=5), (300, "seconds")),
    (timedelta(days=1), (86400, "seconds")),
    (0.5, (500_000, "microseconds")),
])
def test_settings_intervals_are_stored_in_seconds(app: Any, value: Any,
                                                  stored: tuple[int, str]) -> None:
    """django-celery-beat: schedulers.py ModelEntry.to_model_schedule calls
    IntervalSchedule.from_schedule with period=SECONDS, so a 300-second (or 5-minute)
    schedule is every=300, period="seconds". A fraction of a second, which
    django-celery-beat cannot store (every=0 fails validation), is kept in microseconds."""
    app.conf.beat_schedule = {"job": {"task": ADD, "schedule": value}}
    DatabaseScheduler(app)
    row = PeriodicTask.objects.get(name="job").interval
    assert (row.every, row.period) == stored


def test_get_or_create_finds_the_row_beat_wrote(app: Any) -> None:
    """The duplicate the issue describes: code written for django-celery-beat looks the
    interval up in seconds and must find beat's row, not make a second one."""
    app.conf.beat_schedule = {"job": {"task": ADD, "schedule": 300.0}}
    DatabaseScheduler(app)
    row, created = IntervalSchedule.objects.get_or_create(every=300,
                                                          period=IntervalSchedule.SECONDS)
    assert not created and PeriodicTask.objects.get(name="job").interval == row
    DatabaseScheduler(app)  # a restart reuses it too
    assert IntervalSchedule.objects.filter(every=300).count() == 1


def test_interval_from_schedule_and_str(app: Any) -> None:
    """django-celery-beat: models.py IntervalSchedule.from_schedule (an unsaved row when none
    matches) and __str__ ("every minute", "every 5 minutes"); CrontabSchedule and
    ClockedSchedule.from_schedule likewise."""
    fresh = IntervalSchedule.from_schedule(schedule(90))
    assert (fresh.pk, fresh.every, fresh.period) == (None, 90, "seconds")
    fresh.save()
    assert IntervalSchedule.from_schedule(schedule(90)) == fresh
    assert IntervalSchedule.from_schedule(schedule(120), period="minutes").every == 2
    with pytest.raises(ScheduleError, match="not a whole number of minutes"):
        IntervalSchedule.from_schedule(schedule(90), period="minutes")
    assert str(IntervalSchedule(every=1, period="minutes")) == "every minute"
    cron = CrontabSchedule.from_schedule(crontab(minute=5, hour="*/2", tz="Asia/Kathmandu"))
    assert (cron.pk, cron.minute, cron.hour, cron.timezone) == (None, "5", "*/2",
                                                               "Asia/Kathmandu")
    cron.save()
    assert CrontabSchedule.from_schedule(crontab(minute=5, hour="*/2",
                                                 tz="Asia/Kathmandu")) == cron
    when = datetime(2030, 1, 1, tzinfo=UTC)
    assert ClockedSchedule.from_schedule(clocked(when)).clocked_time == when
    assert str(IntervalSchedule(every=5, period="minutes")) == "every 5 minutes"


# --------------------------------------------------------------------------- the migration


def _migrate(target: list[tuple[str, str]]) -> Any:
    executor = MigrationExecutor(connection)
    executor.migrate(target)
    executor.loader.build_graph()
    return executor.loader.project_state(target).apps


def test_data_migration_moves_settings_intervals_to_seconds(transactional_db: None) -> None:
    """0002 forwards: intervals used only by settings rows change in place; one shared with an
    admin-made row stays for it; a settings row whose seconds twin exists moves there.
    Backwards restores the largest unit. Run with Django's migration executor."""
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes("conveyor")
    old = _migrate([("conveyor", "0001_initial")])
    interval, task = old.get_model("conveyor", "IntervalSchedule"), old.get_model(
        "conveyor", "PeriodicTask")
    hourly = interval.objects.create(every=1, period="hours")
    five = interval.objects.create(every=5, period="minutes")
    twin = interval.objects.create(every=86400, period="seconds")
    daily = interval.objects.create(every=1, period="days")
    task.objects.create(name="s-hourly", task=ADD, interval=hourly, from_settings=True)
    task.objects.create(name="s-five", task=ADD, interval=five, from_settings=True)
    task.objects.create(name="admin-five", task=ADD, interval=five, from_settings=False)
    task.objects.create(name="s-daily", task=ADD, interval=daily, from_settings=True)
    task.objects.create(name="admin-twin", task=ADD, interval=twin, from_settings=False)
    try:
        new = _migrate([("conveyor", "0002_solarschedule_interval_seconds")])
        interval = new.get_model("conveyor", "IntervalSchedule")
        task = new.get_model("conveyor", "PeriodicTask")

        def unit(name: str) -> tuple[int, str]:
            row = task.objects.get(name=name).interval
            return row.every, row.period

        assert unit("s-hourly") == (3600, "seconds")
        assert task.objects.get(name="s-hourly").interval_id == hourly.pk  # in place
        assert unit("s-five") == (300, "seconds") and unit("admin-five") == (5, "minutes")
        assert task.objects.get(name="s-daily").interval_id == twin.pk
        assert not interval.objects.filter(pk=daily.pk).exists()
        assert unit("admin-twin") == (86400, "seconds")

        back = _migrate([("conveyor", "0001_initial")])
        task = back.get_model("conveyor", "PeriodicTask")
        assert unit("s-hourly") == (1, "hours") and unit("s-five") == (5, "minutes")
        assert unit("s-daily") == (1, "days") and unit("admin-five") == (5, "minutes")
    finally:
        _migrate(latest)


# --------------------------------------------------------------------------- solar


def test_solar_rows_become_entries_and_settings_solar_becomes_a_row(app: Any) -> None:
    """django-celery-beat: models.py SolarSchedule(event, latitude, longitude) and
    PeriodicTask.solar; the scheduler turns the row into Celery's solar schedule."""
    app.conf.beat_schedule = {"dusk": {"task": ADD, "schedule": solar("dusk_civil", 59.91,
                                                                      10.75)}}
    sched = DatabaseScheduler(app)
    row = PeriodicTask.objects.get(name="dusk").solar
    assert (row.event, row.latitude, row.longitude) == ("dusk_civil", Decimal("59.91"),
                                                        Decimal("10.75"))
    here = SolarSchedule.objects.create(event="sunrise", latitude="-33.8688",
                                        longitude="151.2093")
    PeriodicTask.objects.create(name="sydney", task=ADD, solar=here)
    entries = {e.name: e for e in sched.load()}
    assert entries["sydney"].schedule == solar("sunrise", -33.8688, 151.2093)
    assert entries["dusk"].schedule == solar("dusk_civil", 59.91, 10.75)
    here.refresh_from_db()
    assert str(here) == "Sunrise (-33.868800, 151.209300)"
    assert SolarSchedule.from_schedule(solar("sunrise", -33.8688, 151.2093)) == here


def test_enabled_manager(app: Any) -> None:
    """django-celery-beat: querysets.py PeriodicTaskQuerySet.enabled()."""
    every = IntervalSchedule.objects.create(every=10, period="seconds")
    PeriodicTask.objects.create(name="on", task=ADD, interval=every)
    PeriodicTask.objects.create(name="off", task=ADD, interval=every, enabled=False)
    names = set(PeriodicTask.objects.enabled().values_list("name", flat=True))
    assert "on" in names and "off" not in names
    assert PeriodicTask.objects.filter(name__in=["on", "off"]).enabled().count() == 1


def _noon_longitude_in(seconds: float) -> float:
    """The longitude where the sun crosses the meridian ``seconds`` from now."""
    target = datetime.now(UTC) + timedelta(seconds=seconds)
    lon = ((12 - (target.hour + target.minute / 60 + target.second / 3600)) * 15 + 180) % 360
    lon -= 180
    for _ in range(4):  # the equation of time moves it by up to 4 degrees
        noon = solar("solar_noon", 0, lon).next_run(target - timedelta(hours=12))
        lon += (noon - target).total_seconds() / 240.0
        lon = (lon + 180) % 360 - 180  # across the date line, not stopped at it
    return round(lon, 6)


def test_a_live_beat_runs_a_solar_row(app: Any, processes: Processes, tmp_path: Path) -> None:
    """beat --scheduler DatabaseScheduler sends a SolarSchedule row's task at the event: solar
    noon at a longitude picked so that it falls a few seconds from now."""
    app.config_from_object({"broker_url": processes.env["CONVEYOR_TEST_BROKER"]},
                           namespace=None)
    lon = _noon_longitude_in(12)
    noon = solar("solar_noon", 0, lon).next_run(datetime.now(UTC))
    here = SolarSchedule.objects.create(event="solar_noon", latitude=0, longitude=lon)
    PeriodicTask.objects.create(name="noon", task=ADD, solar=here, args="[1, 1]",
                                queue="solar")
    log = tmp_path / "beat.log"
    beat = processes.start("-m", "conveyor", "-A", "tests.django.proj", "beat", "-l", "INFO",
                           "--scheduler", "conveyor.contrib.django.schedulers:DatabaseScheduler",
                           output=log)
    deliveries = wait_for(lambda: app.broker.reserve(["solar"], 1, 30, 0.2), 40,
                          "the solar noon run")
    assert datetime.now(UTC) >= noon
    message = Message.decode(deliveries[0].body, ["json"])
    assert message.headers["beat_tick"] == noon.isoformat(), log.read_text()
    # Beat records the run just after sending it.
    row = wait_for(lambda: PeriodicTask.objects.filter(name="noon", total_run_count=1).first(),
                   10, "the run to be recorded")
    assert row.last_run_at == noon
    assert beat.poll() is None, log.read_text()


# --------------------------------------------------------------------------- admin


@pytest.fixture
def three(app: Any) -> list[PeriodicTask]:
    every = IntervalSchedule.objects.create(every=30, period="seconds")
    ran = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [PeriodicTask.objects.create(name=f"t{i}", task=ADD, interval=every, args="[1, 2]",
                                        enabled=i != 2, queue="admin") for i in range(3)]
    PeriodicTask.objects.filter(enabled=True).update(last_run_at=ran)
    return rows


def _act(client: Client, action: str, rows: list[PeriodicTask]) -> bytes:
    url = reverse("admin:conveyor_periodictask_changelist")
    response = client.post(url, {"action": action, "_selected_action": [r.pk for r in rows]},
                           follow=True)
    assert response.status_code == 200
    return bytes(response.content)


def _states() -> dict[str, tuple[bool, bool]]:
    return {r.name: (r.enabled, r.last_run_at is not None)
            for r in PeriodicTask.objects.filter(name__in=["t0", "t1", "t2"])}


def test_admin_offers_django_celery_beats_actions(admin_client: Client,
                                                  three: list[PeriodicTask]) -> None:
    """django-celery-beat: admin.py PeriodicTaskAdmin.actions and their descriptions."""
    page = admin_client.get(reverse("admin:conveyor_periodictask_changelist")).content
    for value, label in [("enable_tasks", b"Enable selected tasks"),
                         ("disable_tasks", b"Disable selected tasks"),
                         ("toggle_tasks", b"Toggle activity of selected tasks"),
                         ("run_tasks", b"Run selected tasks")]:
        assert f'value="{value}"'.encode() in page and label in page


def test_admin_toggle_enable_disable(admin_client: Client, three: list[PeriodicTask]) -> None:
    """django-celery-beat: admin.py toggle_tasks flips each row; disable_tasks also clears
    last_run_at (and so does toggling a row off here, as PeriodicTask.save does there)."""
    assert b"2 tasks toggled" in _act(admin_client, "toggle_tasks", three[1:])
    assert _states() == {"t0": (True, True), "t1": (False, False), "t2": (True, False)}
    assert b"3 tasks enabled" in _act(admin_client, "enable_tasks", three)
    assert _states() == {"t0": (True, True), "t1": (True, False), "t2": (True, False)}
    assert b"1 task disabled" in _act(admin_client, "disable_tasks", three[:1])
    assert _states()["t0"] == (False, False)


def test_admin_run_tasks_sends_now(admin_client: Client, app: Any,
                                   three: list[PeriodicTask]) -> None:
    """django-celery-beat: admin.py run_tasks applies each selected task now, on its queue,
    with a periodic_task_name header."""
    assert b"Sent 2 tasks" in _act(admin_client, "run_tasks", three[:2])
    sent = app.broker.reserve(["admin"], 5, 30, 1)
    names = {Message.decode(d.body, ["json"]).headers.get("periodic_task_name") for d in sent}
    assert names == {"t0", "t1"}


def test_saving_a_disabled_task_forgets_its_last_run(app: Any) -> None:
    """django-celery-beat: models.py PeriodicTask.save sets last_run_at None when disabled."""
    every = IntervalSchedule.objects.create(every=30, period="seconds")
    row = PeriodicTask.objects.create(name="paused", task=ADD, interval=every)
    PeriodicTask.objects.filter(pk=row.pk).update(last_run_at=datetime(2026, 1, 1, tzinfo=UTC))
    row.refresh_from_db()
    row.enabled = False
    row.save()
    assert PeriodicTask.objects.get(pk=row.pk).last_run_at is None


# --------------------------------------------------------------------------- beat settings


def test_celerys_beat_settings_are_honoured_or_listed(app: Any) -> None:
    """Celery: app/defaults.py beat namespace. beat_scheduler (Celery's django-celery-beat
    path included) picks the scheduler and beat_max_loop_interval bounds beat's sleep, as in
    Celery: beat.py Service; the three that concern Celery's shelve file and its crontab
    catch-up are accepted and named in the no-effect warning."""
    from conveyor._no_effect import NO_EFFECT
    from conveyor.beat import Beat, load_scheduler

    app.config_from_object({"CELERY_BEAT_SCHEDULER":
                            "django_celery_beat.schedulers:DatabaseScheduler",
                            "CELERY_BEAT_MAX_LOOP_INTERVAL": 2.5}, namespace="CELERY")
    scheduler = load_scheduler(app)
    assert isinstance(scheduler, DatabaseScheduler)
    beat = Beat(app, scheduler)
    assert beat.max_interval == 2.5 and scheduler.refresh_interval == 2.5
    beat.close()
    # Celery's default, 0, means "the scheduler's own default" (Celery: beat.py Scheduler
    # __init__ falls back on it); Conveyor's is 5 seconds for every scheduler.
    app.config_from_object({"CELERY_BEAT_MAX_LOOP_INTERVAL": 0}, namespace="CELERY")
    assert app.conf.beat_max_loop_interval == 5.0
    for name in ("beat_sync_every", "beat_schedule_filename", "beat_cron_starting_deadline"):
        assert name in NO_EFFECT
        value = "beat-file" if name == "beat_schedule_filename" else 7
        app.config_from_object({f"CELERY_{name.upper()}": value}, namespace="CELERY")
        assert name in app.conf.no_effect_set()  # named in the worker's one startup warning


def test_a_solar_row_without_the_library_is_skipped_and_logged(
        app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Without PyEphem a solar row cannot be planned: beat logs why and runs the others."""
    from conveyor.beat.schedules import _sun

    sched = DatabaseScheduler(app)
    here = SolarSchedule.objects.create(event="sunset", latitude=10, longitude=10)
    PeriodicTask.objects.create(name="dusk-row", task=ADD, solar=here)

    def missing() -> None:
        raise _sun.SolarLibraryMissing("solar schedules need PyEphem: pip install "
                                       "'conveyor[solar]' (or 'ephem')")

    monkeypatch.setattr(_sun, "_ephem", missing)
    names = {entry.name for entry in sched.load()}
    assert "dusk-row" not in names and "settings-tick" in names
    assert "periodic task 'dusk-row' skipped" in caplog.text and "conveyor[solar]" in caplog.text
