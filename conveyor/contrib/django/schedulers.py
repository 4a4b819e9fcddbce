"""``DatabaseScheduler``: periodic tasks from the database, editable in the admin.

    conveyor -A proj beat --scheduler conveyor.contrib.django.schedulers:DatabaseScheduler

Beat (holding its leader lease) calls :meth:`DatabaseScheduler.load` every
``refresh_interval`` seconds (5, or ``beat_max_loop_interval`` if shorter),
and each call reads the enabled rows afresh: an edit made in the admin
reaches the running beat within that interval, with no restart and no
change-tracking to go stale (a bulk ``queryset.update()`` is seen too).

At start the ``beat_schedule`` setting is written into the database, so
settings entries show in the admin beside the others: rows are created or
updated by name and marked ``from_settings``; such rows whose name left the
setting are deleted.  ``enabled`` and the run history of a settings row are
kept, so an operator can pause a settings entry from the admin.  Schedules
are stored as django-celery-beat stores them: an interval in whole seconds
(``every=300, period="seconds"`` for ``300`` or ``timedelta(minutes=5)``;
an interval with a fraction of a second in microseconds, which
django-celery-beat cannot store), so ``IntervalSchedule.objects
.get_or_create(every=300, period=IntervalSchedule.SECONDS)`` finds the row
beat wrote; a ``solar`` schedule as a ``SolarSchedule`` row.

A row that cannot be turned into an entry (bad JSON, bad crontab field) is
skipped with an error in the log instead of stopping beat.  If the database
is unreachable, ``load`` keeps answering with the last entries it read;
``record_run`` raises, because beat must know a run was not recorded.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import F

from conveyor._serialization import from_jsonable, to_jsonable
from conveyor.beat.scheduler import Entry, Scheduler
from conveyor.beat.schedules import (
    NEVER,
    Schedule,
    ScheduleError,
    as_schedule,
    clocked,
    crontab,
    schedule,
    solar,
)
from conveyor.contrib.django._connections import prepare_connections, retry_on_disconnect
from conveyor.contrib.django._time import aware, to_db
from conveyor.contrib.django.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
    stored_degrees,
)

if TYPE_CHECKING:
    from conveyor.app import Conveyor

log = logging.getLogger("conveyor.beat")

_UTC = dt_timezone.utc


class DatabaseScheduler(Scheduler):
    """Entries from :class:`~conveyor.contrib.django.models.PeriodicTask` rows."""

    def __init__(self, app: Conveyor) -> None:
        super().__init__(app)
        self.refresh_interval = min(5.0, app.conf.beat_max_loop_interval)
        self.tz = app.conf.timezone
        self._last: list[Entry] = []
        self.sync_settings()

    @property
    def db(self) -> str:
        return router.db_for_write(PeriodicTask)

    # -- the interface --------------------------------------------------------------
    def load(self) -> list[Entry]:
        # Connection hygiene once per refresh (CONN_MAX_AGE, a health check);
        # the per-pass calls below only reconnect when a query finds the
        # connection dead, so a pass costs no extra round trips.
        prepare_connections()
        try:
            rows = retry_on_disconnect(self.db, self._enabled_rows)
        except DatabaseError as exc:
            log.warning("could not read periodic tasks (%s); keeping the %d entries read "
                        "before", exc, len(self._last))
            return list(self._last)
        entries = [entry for entry in map(self.entry_for, rows) if entry is not None]
        self._last = entries
        return list(entries)

    def _enabled_rows(self) -> list[PeriodicTask]:
        return list(PeriodicTask.objects.using(self.db).enabled())

    def last_run(self, name: str) -> datetime | None:
        """``last_run_at``; a clocked entry that never ran counts as armed at its clock time.

        Beat looks back only a short window for entries that never ran; a
        clocked time set in the past (or passed while beat was down) would
        never fire.  Answering "ran just before its time" makes beat send it,
        with the tick's identity fixed at the clock time, under
        ``beat_missed_policy`` like any missed tick.
        """
        row = retry_on_disconnect(self.db, lambda: PeriodicTask.objects.using(self.db)
                                  .filter(name=name)
                                  .values_list("last_run_at", "clocked__clocked_time").first())
        if row is None:
            return None
        last, clock_time = row
        if last is not None:
            return aware(last).astimezone(_UTC)
        if clock_time is not None:
            return aware(clock_time).astimezone(_UTC) - timedelta(microseconds=1)
        return None

    def total_run_count(self, name: str) -> int:
        """How many ticks ``name`` ran for (0 if never or unknown)."""
        count = PeriodicTask.objects.using(self.db).filter(name=name).values_list(
            "total_run_count", flat=True).first()
        return int(count or 0)

    def record_run(self, entry: Entry, run_at: datetime) -> None:
        changes: dict[str, Any] = {"last_run_at": to_db(run_at),
                                   "total_run_count": F("total_run_count") + 1}
        if entry.one_off:
            changes["enabled"] = False
        retry_on_disconnect(self.db, lambda: PeriodicTask.objects.using(self.db)
                            .filter(name=entry.name).update(**changes))

    def close(self) -> None:
        from django.db import connections

        connections.close_all()

    # -- rows to entries ---------------------------------------------------------------
    def entry_for(self, row: PeriodicTask) -> Entry | None:
        """The entry for a row, or None (logged) if the row cannot be used."""
        try:
            when = row.schedule.with_default_tz(self.tz)
            args = tuple(from_jsonable(json.loads(row.args or "[]")))
            kwargs = from_jsonable(json.loads(row.kwargs or "{}"))
            options = _options(row)
        except (ScheduleError, ValueError, TypeError, ImportError) as exc:
            log.error("periodic task %r skipped: %s", row.name, exc)
            return None
        if not isinstance(kwargs, dict):
            log.error("periodic task %r skipped: kwargs is not a JSON object", row.name)
            return None
        return Entry(
            name=row.name, task=row.task, schedule=when, args=args, kwargs=kwargs,
            options=options, enabled=row.enabled, one_off=row.one_off or bool(row.clocked_id),
            start_time=_aware_or_none(row.start_time), expires=_aware_or_none(row.expires),
        )

    # -- settings to rows ---------------------------------------------------------------
    def sync_settings(self) -> None:
        """Write ``beat_schedule`` into the database (see the module docstring)."""
        specs = dict(self.app.conf.beat_schedule)
        prepare_connections()
        for attempt in (1, 2):
            try:
                with transaction.atomic(using=self.db):
                    self._write_settings(specs)
                break
            except IntegrityError:
                if attempt == 2:  # another beat wrote the same rows at the same moment
                    raise
        if specs:
            log.info("beat_schedule: %d entries written to the database", len(specs))

    def _write_settings(self, specs: dict[str, Any]) -> None:
        for name, spec in specs.items():
            try:
                fields = self._fields_from_spec(name, spec)
            except (ScheduleError, KeyError, TypeError, ValueError, ImportError) as exc:
                log.error("beat_schedule entry %r not written to the database: %s", name, exc)
                continue
            row = PeriodicTask.objects.using(self.db).filter(name=name).first()
            if row is None:
                PeriodicTask(name=name, **fields).save(using=self.db)
                continue
            for key, value in fields.items():
                setattr(row, key, value)
            row.save(using=self.db)
        stale = PeriodicTask.objects.using(self.db).filter(from_settings=True).exclude(
            name__in=list(specs))
        if stale.exists():
            log.info("removing periodic tasks no longer in beat_schedule: %s",
                     ", ".join(stale.values_list("name", flat=True)))
            stale.delete()
            PeriodicTasks.update_changed()

    def _fields_from_spec(self, name: str, spec: Any) -> dict[str, Any]:
        if not isinstance(spec, dict) or "task" not in spec or "schedule" not in spec:
            raise ValueError("an entry needs 'task' and 'schedule'")
        options = dict(spec.get("options") or {})
        expires = options.get("expires")
        fields: dict[str, Any] = {
            "task": spec["task"],
            "args": json.dumps(to_jsonable(list(spec.get("args") or ()), f"{name} args")),
            "kwargs": json.dumps(to_jsonable(dict(spec.get("kwargs") or {}), f"{name} kwargs")),
            "queue": options.get("queue"),
            "priority": options.get("priority"),
            "expire_seconds": int(expires) if isinstance(expires, (int, float)) else None,
            "headers": json.dumps(options.get("headers") or {}),
            "one_off": False,
            "from_settings": True,
            "interval": None, "crontab": None, "solar": None, "clocked": None,
            "description": spec.get("description") or "From the beat_schedule setting.",
        }
        kind, row = self._schedule_row(as_schedule(spec["schedule"]))
        fields[kind] = row
        return fields

    def _schedule_row(self, when: Schedule) -> tuple[str, Any]:
        if isinstance(when, schedule):
            every, period = _interval_parts(when.run_every)
            return "interval", _first_or_create(IntervalSchedule, self.db, every=every,
                                                period=period)
        if isinstance(when, crontab):
            data = when.to_dict()
            return "crontab", _first_or_create(
                CrontabSchedule, self.db, minute=data["minute"], hour=data["hour"],
                day_of_week=data["day_of_week"], day_of_month=data["day_of_month"],
                month_of_year=data["month_of_year"], timezone=data["tz"] or self.tz)
        if isinstance(when, solar):
            return "solar", _first_or_create(
                SolarSchedule, self.db, event=when.event, latitude=stored_degrees(when.lat),
                longitude=stored_degrees(when.lon))
        if isinstance(when, clocked):
            return "clocked", _first_or_create(ClockedSchedule, self.db,
                                               clocked_time=to_db(when.clocked_time))
        raise ScheduleError(f"{when!r} cannot be stored in the database")


# --------------------------------------------------------------------------- helpers


def _options(row: PeriodicTask) -> dict[str, Any]:
    headers = json.loads(row.headers or "{}")
    if not isinstance(headers, dict):
        raise ValueError("headers is not a JSON object")
    candidates = {"queue": row.queue or None, "priority": row.priority,
                  "expires": row.expire_seconds or None, "headers": headers or None}
    return {key: value for key, value in candidates.items() if value is not None}


def _aware_or_none(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value).astimezone(_UTC)


def _interval_parts(every: timedelta) -> tuple[int, str]:
    """Whole seconds, as django-celery-beat stores intervals; microseconds for a fraction."""
    micros = every // timedelta(microseconds=1)
    if micros % 1_000_000:
        return micros, IntervalSchedule.MICROSECONDS
    return micros // 1_000_000, IntervalSchedule.SECONDS


def _first_or_create(model: Any, using: str, **fields: Any) -> Any:
    found = model.objects.using(using).filter(**fields).order_by("pk").first()
    if found is not None:
        return found
    return model.objects.using(using).create(**fields)


# ``clocked`` and ``NEVER`` were defined here before the schedule kinds moved to one
# place (``conveyor/beat/schedules/``); importing them from here keeps working.
__all__ = ["NEVER", "DatabaseScheduler", "clocked"]
