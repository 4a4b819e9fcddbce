"""Models for periodic tasks and task results.

Model and field names are django-celery-beat's and django-celery-results',
so code moves over by changing imports and data by copying rows:

========================================  ==========================================
django-celery-beat / -results             here
========================================  ==========================================
``IntervalSchedule(every, period)``       same
``CrontabSchedule(minute, hour, ...,      same (``timezone`` is an IANA name)
timezone)``
``ClockedSchedule(clocked_time)``         same
``SolarSchedule(event, latitude,          same (needs ``conveyor[solar]`` to run)
longitude)``
``PeriodicTask(name, task, interval,      same, plus ``from_settings`` (rows written
crontab, solar, clocked, args, kwargs,    from ``beat_schedule``)
queue, ..., last_run_at,
total_run_count)``
``PeriodicTask.objects.enabled()``        same
``PeriodicTasks.update_changed()``        same (informational: the scheduler reloads)
``TaskResult(task_id, status, result,     same, plus ``retries``, ``queue`` and the
traceback, date_done, ...)``              stored record (``payload``, ``expires_at``)
``GroupResult(group_id, result, ...)``    same
``ChordCounter``                          ``ChordCounter`` + ``ChordPart`` (one row per
                                          header result: a redelivery cannot count twice)
========================================  ==========================================

Tables (app label ``conveyor``): ``conveyor_intervalschedule``,
``conveyor_crontabschedule``, ``conveyor_clockedschedule``,
``conveyor_solarschedule`` (unique ``(event, latitude, longitude)``),
``conveyor_periodictask``, ``conveyor_periodictasks``, ``conveyor_taskresult``
(unique ``task_id``; indexes on ``status``, ``task_name``, ``date_done``,
``expires_at``), ``conveyor_groupresult``, ``conveyor_chordcounter`` (unique
``group_id``) and ``conveyor_chordpart`` (unique ``(group_id, index)``).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from conveyor import schedules, states
from conveyor.contrib.django._time import aware
from conveyor.schedules import Schedule, ScheduleError, crontab, schedule, solar

# --------------------------------------------------------------------------- validators


def validate_timezone(value: str) -> None:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValidationError(_("%(value)s is not an IANA time zone name"),
                              params={"value": value}) from exc


def validate_json_list(value: str) -> None:
    _validate_json(value, list, _("a JSON list, e.g. [1, \"two\"]"))


def validate_json_dict(value: str) -> None:
    _validate_json(value, dict, _("a JSON object, e.g. {\"key\": \"value\"}"))


def _validate_json(value: str, kind: type, expected: Any) -> None:
    try:
        parsed = json.loads(value or ("[]" if kind is list else "{}"))
    except ValueError as exc:
        raise ValidationError(_("must be %(expected)s: %(error)s"),
                              params={"expected": expected, "error": exc}) from exc
    if not isinstance(parsed, kind):
        raise ValidationError(_("must be %(expected)s"), params={"expected": expected})


def default_timezone() -> str:
    """New crontabs read their fields in the project's TIME_ZONE."""
    return str(getattr(settings, "TIME_ZONE", None) or "UTC")


# --------------------------------------------------------------------------- schedules


class IntervalSchedule(models.Model):
    """Every N days/hours/minutes/seconds, counted from the last run."""

    DAYS = "days"
    HOURS = "hours"
    MINUTES = "minutes"
    SECONDS = "seconds"
    MICROSECONDS = "microseconds"
    PERIOD_CHOICES = [
        (DAYS, _("Days")),
        (HOURS, _("Hours")),
        (MINUTES, _("Minutes")),
        (SECONDS, _("Seconds")),
        (MICROSECONDS, _("Microseconds")),
    ]

    every = models.PositiveIntegerField(_("number of periods"))
    period = models.CharField(_("interval period"), max_length=24, choices=PERIOD_CHOICES)

    class Meta:
        verbose_name = _("interval")
        verbose_name_plural = _("intervals")
        ordering = ["period", "every"]

    def __str__(self) -> str:
        if self.every == 1:  # "every minute", as django-celery-beat shows it
            return f"every {self.period[:-1]}"
        return f"every {self.every} {self.period}"

    def clean(self) -> None:
        if not self.every:
            raise ValidationError({"every": _("must be at least 1")})

    @property
    def period_singular(self) -> str:
        return self.period[:-1]

    @property
    def schedule(self) -> Schedule:
        return schedule(timedelta(**{self.period: self.every}))

    @classmethod
    def from_schedule(cls, when: schedules.schedule, period: str = SECONDS) -> IntervalSchedule:
        """The row for ``when`` in ``period`` units (saved or not), as django-celery-beat's.

        django-celery-beat stores a schedule read from settings in whole
        seconds (``every=300, period="seconds"`` for five minutes), so this
        finds the rows its code made.  An interval that is not a whole number
        of ``period`` is refused rather than rounded.
        """
        every, rest = divmod(when.run_every, timedelta(**{period: 1}))
        if rest or every < 1:
            raise ScheduleError(f"{when!r} is not a whole number of {period}")
        found = cls.objects.filter(every=every, period=period).order_by("pk").first()
        return found if found is not None else cls(every=every, period=period)


class CrontabSchedule(models.Model):
    """Wall-clock times, cron syntax, read in ``timezone``."""

    minute = models.CharField(_("minute(s)"), max_length=240, default="*")
    hour = models.CharField(_("hour(s)"), max_length=96, default="*")
    day_of_month = models.CharField(_("day(s) of month"), max_length=124, default="*")
    month_of_year = models.CharField(_("month(s) of year"), max_length=64, default="*")
    day_of_week = models.CharField(_("day(s) of week"), max_length=64, default="*")
    timezone = models.CharField(_("time zone"), max_length=63, default=default_timezone,
                                validators=[validate_timezone],
                                help_text=_("IANA name, e.g. Asia/Kathmandu"))

    class Meta:
        verbose_name = _("crontab")
        verbose_name_plural = _("crontabs")
        ordering = ["month_of_year", "day_of_month", "day_of_week", "hour", "minute",
                    "timezone"]

    def __str__(self) -> str:
        return (f"{self.minute} {self.hour} {self.day_of_month} {self.month_of_year} "
                f"{self.day_of_week} (m/h/dM/MY/d) {self.timezone}")

    def clean(self) -> None:
        try:
            self.schedule  # noqa: B018 - parsing is the validation
        except ScheduleError as exc:
            raise ValidationError(str(exc)) from exc

    @property
    def schedule(self) -> Schedule:
        return crontab(minute=self.minute, hour=self.hour, day_of_week=self.day_of_week,
                       day_of_month=self.day_of_month, month_of_year=self.month_of_year,
                       tz=self.timezone or None)

    @classmethod
    def from_schedule(cls, when: schedules.crontab) -> CrontabSchedule:
        """The row for ``when`` (saved or not), as django-celery-beat's; a crontab that
        follows the app's zone is stored in the project's default zone."""
        data = when.to_dict()
        spec = {name: data[name] for name in ("minute", "hour", "day_of_week",
                                              "day_of_month", "month_of_year")}
        spec["timezone"] = data["tz"] or default_timezone()
        found = cls.objects.filter(**spec).order_by("pk").first()
        return found if found is not None else cls(**spec)


#: django-celery-beat's solar events, in its order, with its labels.
SOLAR_SCHEDULES = [
    ("dawn_astronomical", _("Astronomical dawn")),
    ("dawn_civil", _("Civil dawn")),
    ("dawn_nautical", _("Nautical dawn")),
    ("dusk_astronomical", _("Astronomical dusk")),
    ("dusk_civil", _("Civil dusk")),
    ("dusk_nautical", _("Nautical dusk")),
    ("solar_noon", _("Solar noon")),
    ("sunrise", _("Sunrise")),
    ("sunset", _("Sunset")),
]


class SolarSchedule(models.Model):
    """At a solar event (sunrise, sunset, a dawn or dusk, solar noon) at a place."""

    event = models.CharField(_("solar event"), max_length=24, choices=SOLAR_SCHEDULES)
    latitude = models.DecimalField(
        _("latitude"), max_digits=9, decimal_places=6,
        validators=[MinValueValidator(-90), MaxValueValidator(90)],
        help_text=_("Degrees, north positive"))
    longitude = models.DecimalField(
        _("longitude"), max_digits=9, decimal_places=6,
        validators=[MinValueValidator(-180), MaxValueValidator(180)],
        help_text=_("Degrees, east positive"))

    class Meta:
        verbose_name = _("solar event")
        verbose_name_plural = _("solar events")
        ordering = ["event", "latitude", "longitude"]
        unique_together = [("event", "latitude", "longitude")]

    def __str__(self) -> str:
        return f"{self.get_event_display()} ({self.latitude}, {self.longitude})"

    @property
    def schedule(self) -> Schedule:
        return solar(self.event, float(self.latitude), float(self.longitude))

    @classmethod
    def from_schedule(cls, when: schedules.solar) -> SolarSchedule:
        """The row for ``when`` (saved or not), as django-celery-beat's."""
        spec = {"event": when.event, "latitude": stored_degrees(when.lat),
                "longitude": stored_degrees(when.lon)}
        found = cls.objects.filter(**spec).first()
        return found if found is not None else cls(**spec)


def stored_degrees(degrees: float) -> Decimal:
    """Degrees as the latitude/longitude columns keep them: six decimal places (~10 cm)."""
    return Decimal(repr(degrees)).quantize(Decimal("0.000001"))


class ClockedSchedule(models.Model):
    """Once, at ``clocked_time`` (its periodic task must be ``one_off``)."""

    clocked_time = models.DateTimeField(_("clock time"))

    class Meta:
        verbose_name = _("clocked")
        verbose_name_plural = _("clocked")
        ordering = ["clocked_time"]

    def __str__(self) -> str:
        return f"at {self.clocked_time:%Y-%m-%d %H:%M:%S %Z}".strip()

    @property
    def schedule(self) -> Schedule:
        return schedules.clocked(aware(self.clocked_time))

    @classmethod
    def from_schedule(cls, when: schedules.clocked) -> ClockedSchedule:
        """The row for a ``clocked`` schedule (saved or not), as django-celery-beat's."""
        found = cls.objects.filter(clocked_time=when.clocked_time).order_by("pk").first()
        return found if found is not None else cls(clocked_time=when.clocked_time)


# --------------------------------------------------------------------------- periodic tasks


class PeriodicTaskQuerySet(models.QuerySet["PeriodicTask"]):
    """``PeriodicTask.objects``: django-celery-beat's manager methods."""

    def enabled(self) -> PeriodicTaskQuerySet:
        """Enabled rows, with their schedule rows fetched in the same query."""
        return self.filter(enabled=True).select_related("interval", "crontab", "solar",
                                                        "clocked")


SCHEDULE_KINDS = ("interval", "crontab", "solar", "clocked")


class PeriodicTask(models.Model):
    """A task beat sends on one of the four kinds of schedule."""

    name = models.CharField(_("name"), max_length=200, unique=True,
                            help_text=_("A short description that identifies this entry"))
    task = models.CharField(_("task name"), max_length=200,
                            help_text=_("The registered name, e.g. orders.tasks.nightly"))
    interval = models.ForeignKey(IntervalSchedule, on_delete=models.CASCADE,
                                 null=True, blank=True, verbose_name=_("interval schedule"))
    crontab = models.ForeignKey(CrontabSchedule, on_delete=models.CASCADE,
                                null=True, blank=True, verbose_name=_("crontab schedule"))
    solar = models.ForeignKey(SolarSchedule, on_delete=models.CASCADE,
                              null=True, blank=True, verbose_name=_("solar schedule"))
    clocked = models.ForeignKey(ClockedSchedule, on_delete=models.CASCADE,
                                null=True, blank=True, verbose_name=_("clocked schedule"))
    args = models.TextField(_("positional arguments"), blank=True, default="[]",
                            validators=[validate_json_list], help_text=_("JSON list"))
    kwargs = models.TextField(_("keyword arguments"), blank=True, default="{}",
                              validators=[validate_json_dict], help_text=_("JSON object"))
    queue = models.CharField(_("queue"), max_length=200, blank=True, null=True, default=None,
                             help_text=_("Empty: the task's routing decides"))
    exchange = models.CharField(_("exchange"), max_length=200, blank=True, null=True,
                                default=None, help_text=_("Accepted for compatibility"))
    routing_key = models.CharField(_("routing key"), max_length=200, blank=True, null=True,
                                   default=None, help_text=_("Accepted for compatibility"))
    headers = models.TextField(_("headers"), blank=True, default="{}",
                               validators=[validate_json_dict])
    priority = models.PositiveIntegerField(_("priority"), null=True, blank=True, default=None,
                                           help_text=_("0..9, 0 most urgent"))
    expires = models.DateTimeField(_("expires"), null=True, blank=True,
                                   help_text=_("No runs after this time"))
    expire_seconds = models.PositiveIntegerField(
        _("expire seconds"), null=True, blank=True,
        help_text=_("A sent run is dropped if not started within this many seconds"))
    one_off = models.BooleanField(_("one-off task"), default=False,
                                  help_text=_("Disable after the first run"))
    start_time = models.DateTimeField(_("start time"), null=True, blank=True,
                                      help_text=_("No runs before this time"))
    enabled = models.BooleanField(_("enabled"), default=True)
    last_run_at = models.DateTimeField(_("last run at"), null=True, blank=True, editable=False)
    total_run_count = models.PositiveIntegerField(_("total run count"), default=0,
                                                  editable=False)
    date_changed = models.DateTimeField(_("last modified"), auto_now=True)
    description = models.TextField(_("description"), blank=True)
    from_settings = models.BooleanField(
        _("from settings"), default=False, editable=False,
        help_text=_("Written from beat_schedule when beat starts; edit the settings"))

    objects = PeriodicTaskQuerySet.as_manager()

    class Meta:
        verbose_name = _("periodic task")
        verbose_name_plural = _("periodic tasks")
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name}: {self.schedule_description}"

    @property
    def schedule_model(
        self,
    ) -> IntervalSchedule | CrontabSchedule | SolarSchedule | ClockedSchedule | None:
        return self.interval or self.crontab or self.solar or self.clocked

    @property
    def schedule(self) -> Schedule:
        chosen = self.schedule_model
        if chosen is None:
            raise ScheduleError(f"periodic task {self.name!r} has no schedule")
        return chosen.schedule

    @property
    def schedule_description(self) -> str:
        chosen = self.schedule_model
        return str(chosen) if chosen is not None else "no schedule"

    def clean(self) -> None:
        chosen = [f for f in SCHEDULE_KINDS if getattr(self, f"{f}_id")]
        if len(chosen) != 1:
            raise ValidationError(_("Choose exactly one schedule: interval, crontab, solar "
                                    "or clocked."))
        if self.clocked_id and not self.one_off:
            raise ValidationError({"one_off": _("A clocked schedule runs once: tick one-off.")})
        if self.priority is not None and self.priority > 9:
            raise ValidationError({"priority": _("0..9, 0 most urgent")})

    def save(self, *args: Any, **kwargs: Any) -> None:
        # As django-celery-beat: a disabled task forgets its last run, so that
        # enabling it again starts it afresh instead of catching up on the pause.
        if not self.enabled:
            self.last_run_at = None
        super().save(*args, **kwargs)
        PeriodicTasks.update_changed()

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        result = super().delete(*args, **kwargs)
        PeriodicTasks.update_changed()
        return result

    def args_list(self) -> list[Any]:
        return list(json.loads(self.args or "[]"))

    def kwargs_dict(self) -> dict[str, Any]:
        return dict(json.loads(self.kwargs or "{}"))


class PeriodicTasks(models.Model):
    """When periodic tasks last changed (django-celery-beat's change marker)."""

    ident = models.SmallIntegerField(default=1, primary_key=True, unique=True)
    last_update = models.DateTimeField(null=False)

    class Meta:
        verbose_name = _("periodic tasks change marker")

    @classmethod
    def update_changed(cls) -> None:
        cls.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})

    @classmethod
    def last_change(cls) -> datetime | None:
        row = cls.objects.filter(ident=1).first()
        return row.last_update if row else None


# --------------------------------------------------------------------------- results

STATE_CHOICES = sorted((state, state) for state in states.ALL_STATES)


class TaskResult(models.Model):
    """One task's latest state, as the ``django-db`` result store wrote it.

    ``payload`` (the encoded record) and ``status`` are what the store reads;
    the other columns are filled from the record for the admin and queries.
    """

    task_id = models.CharField(_("task id"), max_length=255, unique=True)
    periodic_task_name = models.CharField(_("periodic task name"), max_length=255, null=True)
    task_name = models.CharField(_("task name"), max_length=255, null=True, db_index=True)
    task_args = models.TextField(_("task positional arguments"), null=True)
    task_kwargs = models.TextField(_("task keyword arguments"), null=True)
    status = models.CharField(_("task state"), max_length=50, default=states.PENDING,
                              choices=STATE_CHOICES, db_index=True)
    worker = models.CharField(_("worker"), max_length=100, null=True, default=None)
    content_type = models.CharField(_("result content type"), max_length=128,
                                    default="application/json")
    content_encoding = models.CharField(_("result encoding"), max_length=64, default="utf-8")
    result = models.TextField(_("result data"), null=True, default=None)
    date_created = models.DateTimeField(_("created"), auto_now_add=True)
    date_started = models.DateTimeField(_("started"), null=True, default=None)
    date_done = models.DateTimeField(_("completed"), null=True, db_index=True)
    traceback = models.TextField(_("traceback"), blank=True, null=True)
    meta = models.TextField(_("task metadata"), null=True, default=None)
    retries = models.PositiveIntegerField(_("retries"), default=0)
    queue = models.CharField(_("queue"), max_length=200, null=True, default=None)
    payload = models.BinaryField(_("stored record"))
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    class Meta:
        verbose_name = _("task result")
        verbose_name_plural = _("task results")
        ordering = ["-date_done", "-id"]

    def __str__(self) -> str:
        return f"<Task: {self.task_id} ({self.status})>"


class GroupResult(models.Model):
    """A group's member ids, as ``GroupResult.save()`` stored them."""

    group_id = models.CharField(_("group id"), max_length=255, unique=True)
    date_created = models.DateTimeField(_("created"), auto_now_add=True)
    date_done = models.DateTimeField(_("completed"), auto_now=True)
    content_type = models.CharField(_("result content type"), max_length=128,
                                    default="application/json")
    content_encoding = models.CharField(_("result encoding"), max_length=64, default="utf-8")
    result = models.TextField(_("result data"), null=True, default=None)
    payload = models.BinaryField(_("stored payload"))
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    class Meta:
        verbose_name = _("group result")
        verbose_name_plural = _("group results")
        ordering = ["-date_done"]

    def __str__(self) -> str:
        return f"<Group: {self.group_id}>"


class ChordCounter(models.Model):
    """A chord's join: its size, and whether it is closed (body sent, or a member failed)."""

    group_id = models.CharField(_("group id"), max_length=255, unique=True)
    size = models.PositiveIntegerField(_("header size"))
    fired = models.BooleanField(_("callback released"), default=False)
    date_created = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    class Meta:
        verbose_name = _("chord counter")


class ChordPart(models.Model):
    """One header result of a chord; unique per index, so redelivery counts once."""

    group_id = models.CharField(_("group id"), max_length=255)
    index = models.PositiveIntegerField(_("header index"))
    payload = models.BinaryField(_("stored payload"))
    expires_at = models.DateTimeField(_("expires at"), db_index=True)

    class Meta:
        verbose_name = _("chord part")
        constraints = [
            models.UniqueConstraint(fields=["group_id", "index"], name="conveyor_chordpart_once"),
        ]


__all__ = [
    "ChordCounter",
    "ChordPart",
    "ClockedSchedule",
    "CrontabSchedule",
    "GroupResult",
    "IntervalSchedule",
    "PeriodicTask",
    "PeriodicTaskQuerySet",
    "PeriodicTasks",
    "SolarSchedule",
    "TaskResult",
]
