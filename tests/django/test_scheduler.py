"""The database scheduler: models, settings sync, entries, run history, and a live beat."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from django.db import DatabaseError

from conveyor.contrib.django.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
    TaskResult,
)
from conveyor.contrib.django.schedulers import NEVER, DatabaseScheduler, clocked
from conveyor.schedules import crontab, schedule
from tests.django.conftest import ON_POSTGRES, Processes, wait_for

UTC = timezone.utc

# The names django-celery-beat and django-celery-results users' code and data rely on.
COMPATIBLE_FIELDS = {
    PeriodicTask: ["name", "task", "interval", "crontab", "solar", "clocked", "args", "kwargs",
                   "queue",
                   "exchange", "routing_key", "headers", "priority", "expires",
                   "expire_seconds", "one_off", "start_time", "enabled", "last_run_at",
                   "total_run_count", "date_changed", "description"],
    IntervalSchedule: ["every", "period"],
    CrontabSchedule: ["minute", "hour", "day_of_week", "day_of_month", "month_of_year",
                      "timezone"],
    ClockedSchedule: ["clocked_time"],
    SolarSchedule: ["event", "latitude", "longitude"],
    TaskResult: ["task_id", "periodic_task_name", "task_name", "task_args", "task_kwargs",
                 "status", "worker", "content_type", "content_encoding", "result",
                 "date_created", "date_started", "date_done", "traceback", "meta"],
}


@pytest.mark.parametrize("model", list(COMPATIBLE_FIELDS), ids=lambda m: m.__name__)
def test_model_and_field_names_match_the_celery_packages(model: Any) -> None:
    names = {f.name for f in model._meta.get_fields()}
    assert set(COMPATIBLE_FIELDS[model]) <= names


def scheduler(app: Any) -> DatabaseScheduler:
    return DatabaseScheduler(app)


def interval_task(name: str, seconds: int = 10, **fields: Any) -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=seconds, period=IntervalSchedule.SECONDS)
    return PeriodicTask.objects.create(name=name, task="tests.django.testapp.tasks.add",
                                       interval=every, args="[1, 2]", **fields)


def test_settings_entries_are_written_to_the_database(app: Any) -> None:
    scheduler(app)
    row = PeriodicTask.objects.get(name="settings-tick")
    assert row.from_settings and row.enabled
    assert (row.task, row.queue, json.loads(row.args)) == (
        "tests.django.testapp.tasks.add", "beat", [1, 2])
    # Stored as django-celery-beat stores it: whole seconds.
    assert (row.interval.every, row.interval.period) == (3600, "seconds")


def test_settings_sync_keeps_admin_choices_and_drops_removed_entries(app: Any) -> None:
    scheduler(app)
    PeriodicTask.objects.filter(name="settings-tick").update(enabled=False, total_run_count=7)
    PeriodicTask.objects.create(name="gone", task="x", from_settings=True,
                                interval=IntervalSchedule.objects.create(every=1,
                                                                         period="days"))
    interval_task("admin-made")
    scheduler(app)  # beat restarts
    kept = PeriodicTask.objects.get(name="settings-tick")
    assert (kept.enabled, kept.total_run_count) == (False, 7)
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {"settings-tick",
                                                                        "admin-made"}
    assert IntervalSchedule.objects.filter(every=3600, period="seconds").count() == 1


def test_crontab_settings_entry_keeps_its_zone(app: Any) -> None:
    app.conf.beat_schedule = {"kathmandu": {
        "task": "t", "schedule": crontab(minute=15, hour=8, tz="Asia/Kathmandu")},
        "daily": {"task": "t", "schedule": crontab(minute=0, hour=8)}}
    scheduler(app)
    assert PeriodicTask.objects.get(name="kathmandu").crontab.timezone == "Asia/Kathmandu"
    assert PeriodicTask.objects.get(name="daily").crontab.timezone == "UTC"


def test_load_turns_rows_into_entries(app: Any) -> None:
    sched = scheduler(app)
    cron = CrontabSchedule.objects.create(minute="*/5", hour="9-17", timezone="Europe/Berlin")
    when = datetime(2030, 1, 1, 12, tzinfo=UTC)
    clock = ClockedSchedule.objects.create(clocked_time=when)
    interval_task("every-10s", queue="orders", priority=7, expire_seconds=30,
                  kwargs='{"z": 1}', headers='{"h": "v"}')
    PeriodicTask.objects.create(name="cron", task="t", crontab=cron)
    PeriodicTask.objects.create(name="once", task="t", clocked=clock, one_off=True)
    interval_task("off", enabled=False)
    entries = {e.name: e for e in sched.load()}
    assert set(entries) == {"settings-tick", "every-10s", "cron", "once"}
    every = entries["every-10s"]
    assert every.schedule == schedule(10) and every.args == (1, 2) and every.kwargs == {"z": 1}
    assert every.options == {"queue": "orders", "priority": 7, "expires": 30,
                             "headers": {"h": "v"}}
    assert entries["cron"].schedule == crontab(minute="*/5", hour="9-17", tz="Europe/Berlin")
    assert entries["once"].schedule == clocked(when) and entries["once"].one_off


def test_a_broken_row_is_skipped_not_fatal(app: Any) -> None:
    sched = scheduler(app)
    interval_task("good")
    interval_task("bad-args").__class__.objects.filter(name="bad-args").update(args="[oops")
    cron = CrontabSchedule.objects.create(minute="61")
    PeriodicTask.objects.create(name="bad-cron", task="t", crontab=cron)
    assert {e.name for e in sched.load()} == {"settings-tick", "good"}


def test_load_keeps_the_last_entries_when_the_database_is_down(
        app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sched = scheduler(app)
    before = sched.load()

    def down() -> list[PeriodicTask]:
        raise DatabaseError("server closed the connection")

    monkeypatch.setattr(sched, "_enabled_rows", down)
    assert sched.load() == before


def test_record_run_and_last_run(app: Any) -> None:
    sched = scheduler(app)
    interval_task("counted")
    entry = next(e for e in sched.load() if e.name == "counted")
    assert sched.last_run("counted") is None
    tick = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    sched.record_run(entry, tick)
    sched.record_run(entry, tick + timedelta(seconds=10))
    row = PeriodicTask.objects.get(name="counted")
    assert (row.total_run_count, row.enabled) == (2, True)
    assert sched.last_run("counted") == tick + timedelta(seconds=10)
    assert sched.total_run_count("counted") == 2


def test_one_off_entries_disable_themselves(app: Any) -> None:
    sched = scheduler(app)
    interval_task("once", one_off=True)
    entry = next(e for e in sched.load() if e.name == "once")
    sched.record_run(entry, datetime.now(UTC))
    assert not PeriodicTask.objects.get(name="once").enabled
    assert "once" not in {e.name for e in sched.load()}


def test_a_clocked_entry_is_armed_at_its_time(app: Any) -> None:
    sched = scheduler(app)
    when = datetime(2020, 1, 1, tzinfo=UTC)  # long past: still runs once
    PeriodicTask.objects.create(name="late", task="t", one_off=True,
                                clocked=ClockedSchedule.objects.create(clocked_time=when))
    last = sched.last_run("late")
    assert last is not None and last < when
    assert clocked(when).next_run(last) == when
    assert clocked(when).next_run(when) == NEVER


def test_changes_are_marked_for_django_celery_beat_code(app: Any) -> None:
    before = PeriodicTasks.last_change()
    interval_task("marked")
    after = PeriodicTasks.last_change()
    assert after is not None and (before is None or after >= before)


def _ready(app: Any, queue: str) -> int:
    return sum(s.ready for s in app.broker.stats([queue]))


def test_admin_edits_reach_a_running_beat(app: Any, broker_processes: Processes,
                                         tmp_path: Path) -> None:
    """beat --scheduler DatabaseScheduler; the ORM edits rows; ticks follow within seconds
    (on SQLite and on RabbitMQ)."""
    processes = broker_processes
    app.config_from_object({"broker_url": processes.env["CONVEYOR_TEST_BROKER"]},
                           namespace=None)
    log = tmp_path / "beat.log"
    beat = processes.start("-m", "conveyor", "-A", "tests.django.proj", "beat", "-l", "INFO",
                           "--scheduler", "conveyor.contrib.django.schedulers:DatabaseScheduler",
                           output=log)
    wait_for(lambda: PeriodicTask.objects.filter(name="settings-tick").exists(), 30,
             "beat to write the settings entries")
    row = interval_task("live", seconds=1, queue="ticks")
    wait_for(lambda: _ready(app, "ticks") >= 2, 20, "ticks of the new entry")

    row.refresh_from_db()  # the admin edits a freshly loaded row, not a stale copy
    row.queue = "moved"  # an edit, as the admin's save() makes it
    row.save()
    wait_for(lambda: _ready(app, "moved") >= 1, 20, "ticks on the edited queue")

    PeriodicTask.objects.filter(name="live").update(enabled=False)  # the admin's action
    settled = wait_for(lambda: _stable(app, "moved"), 20, "ticks to stop after disabling")
    assert settled
    assert PeriodicTask.objects.get(name="live").total_run_count >= 3
    assert beat.poll() is None, log.read_text()


def _stable(app: Any, queue: str) -> bool:
    import time

    before = _ready(app, queue)
    time.sleep(2.5)
    return _ready(app, queue) == before


@pytest.mark.skipif(not ON_POSTGRES, reason="needs a database server to drop the connection")
def test_scheduler_survives_a_dropped_connection(app: Any) -> None:
    import psycopg
    from django.db import connection

    sched = scheduler(app)
    interval_task("steady")
    entry = next(e for e in sched.load() if e.name == "steady")
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    with psycopg.connect(**connection.get_connection_params(), autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", [pid])
    assert sched.last_run("steady") is None  # reconnects and answers
    sched.record_run(entry, datetime(2026, 1, 1, tzinfo=UTC))
    assert "steady" in {e.name for e in sched.load()}
    assert PeriodicTask.objects.get(name="steady").total_run_count == 1


def test_the_short_alias_django_names_the_database_scheduler(app: Any) -> None:
    """``beat -S django``: django-celery-beat registers ``django`` as an alias of its
    DatabaseScheduler (its setup.py entry point); Conveyor maps it onto its own."""
    from conveyor.beat import load_scheduler

    assert type(load_scheduler(app, "django")) is DatabaseScheduler
