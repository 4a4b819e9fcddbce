"""Solar schedules, and intervals written from settings stored in seconds.

Beat used to store a ``beat_schedule`` interval in its largest whole unit
(300 s as ``every=5, period="minutes"``); django-celery-beat stores it in
seconds (``every=300, period="seconds"``), and code written for it looks the
row up that way.  The data step moves the interval rows used by settings
entries (``from_settings``) to seconds.  Rows the admin or user code made are
left as they are: their unit is the one the user chose, and means the same.

A row used only by settings entries is changed in place, unless an equal
seconds row exists, in which case the entries move to that one and the old
row is deleted.  A row shared with other entries stays for them, and the
settings entries move to a seconds row.  Backwards does the reverse (the
largest whole unit), so the old code finds its rows again.
"""

from typing import Any

import django.core.validators
import django.db.models.deletion
from django.db import migrations, models

SECOND_UNITS = {"days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}


def seconds_form(every: int, period: str) -> tuple[int, str] | None:
    """What beat now writes for an interval: whole seconds (None: keep as it is)."""
    if period not in SECOND_UNITS:  # microseconds: a fraction of a second, already exact
        return None
    return every * SECOND_UNITS[period], "seconds"


def largest_unit_form(every: int, period: str) -> tuple[int, str] | None:
    """What beat wrote before: the largest unit that divides the interval."""
    if period != "seconds":
        return None
    for unit, size in SECOND_UNITS.items():
        if every % size == 0:
            return every // size, unit
    return None


def move_settings_intervals(apps: Any, schema_editor: Any, convert: Any) -> None:
    interval_model = apps.get_model("conveyor", "IntervalSchedule")
    task_model = apps.get_model("conveyor", "PeriodicTask")
    db = schema_editor.connection.alias
    tasks = task_model.objects.using(db)
    used = tasks.filter(from_settings=True, interval__isnull=False).values_list(
        "interval_id", flat=True
    )
    for row in interval_model.objects.using(db).filter(pk__in=set(used)).order_by("pk"):
        target = convert(row.every, row.period)
        if target is None or target == (row.every, row.period):
            continue
        every, period = target
        shared = tasks.filter(interval=row, from_settings=False).exists()
        existing = (
            interval_model.objects.using(db)
            .filter(every=every, period=period)
            .order_by("pk")
            .first()
        )
        if existing is None and not shared:
            row.every, row.period = every, period
            row.save(using=db, update_fields=["every", "period"])
            continue
        if existing is None:
            existing = interval_model.objects.using(db).create(every=every, period=period)
        tasks.filter(interval=row, from_settings=True).update(interval=existing)
        if not shared:
            row.delete()
    if schema_editor.connection.vendor == "postgresql":
        # Fire the foreign-key checks of the rows changed above now: PostgreSQL
        # refuses the schema changes of this migration (its index, or dropping
        # the column backwards) while deferred checks are pending.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")


def forwards(apps: Any, schema_editor: Any) -> None:
    move_settings_intervals(apps, schema_editor, seconds_form)


def backwards(apps: Any, schema_editor: Any) -> None:
    move_settings_intervals(apps, schema_editor, largest_unit_form)


class Migration(migrations.Migration):
    dependencies = [
        ("conveyor", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="SolarSchedule",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "event",
                    models.CharField(
                        choices=[
                            ("dawn_astronomical", "Astronomical dawn"),
                            ("dawn_civil", "Civil dawn"),
                            ("dawn_nautical", "Nautical dawn"),
                            ("dusk_astronomical", "Astronomical dusk"),
                            ("dusk_civil", "Civil dusk"),
                            ("dusk_nautical", "Nautical dusk"),
                            ("solar_noon", "Solar noon"),
                            ("sunrise", "Sunrise"),
                            ("sunset", "Sunset"),
                        ],
                        max_length=24,
                        verbose_name="solar event",
                    ),
                ),
                (
                    "latitude",
                    models.DecimalField(
                        decimal_places=6,
                        help_text="Degrees, north positive",
                        max_digits=9,
                        validators=[
                            django.core.validators.MinValueValidator(-90),
                            django.core.validators.MaxValueValidator(90),
                        ],
                        verbose_name="latitude",
                    ),
                ),
                (
                    "longitude",
                    models.DecimalField(
                        decimal_places=6,
                        help_text="Degrees, east positive",
                        max_digits=9,
                        validators=[
                            django.core.validators.MinValueValidator(-180),
                            django.core.validators.MaxValueValidator(180),
                        ],
                        verbose_name="longitude",
                    ),
                ),
            ],
            options={
                "verbose_name": "solar event",
                "verbose_name_plural": "solar events",
                "ordering": ["event", "latitude", "longitude"],
                "unique_together": {("event", "latitude", "longitude")},
            },
        ),
        migrations.AddField(
            model_name="periodictask",
            name="solar",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                to="conveyor.solarschedule",
                verbose_name="solar schedule",
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
