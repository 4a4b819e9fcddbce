"""Periodic task priorities move to Celery's order: 0 most urgent, 9 least.

Until this migration Conveyor served 9 first, so a row saved with
priority 9 meant "most urgent"; Conveyor now follows Celery on Redis (lower
is more urgent, see docs/decisions/0008-celery-priority-order.md).  Each stored
priority ``p`` becomes ``9 - p`` (anything above 9, which the form refused,
is read as 9 first), so every periodic task keeps the urgency it was given.
Empty priorities (the task's or the app's default) stay empty.  Applying
the same change again undoes it, so the migration is reversible.

Rows copied from django-celery-beat *before* this migration held Celery's
numbers already and are flipped with the rest: copy them again after
migrating, or check their priority in the admin.
"""

from __future__ import annotations

from typing import Any

from django.db import migrations, models
from django.db.models import F


def flip_priorities(apps: Any, schema_editor: Any) -> None:
    periodic = apps.get_model("conveyor", "PeriodicTask")
    rows = periodic.objects.using(schema_editor.connection.alias)
    rows.filter(priority__gt=9).update(priority=9)
    rows.filter(priority__isnull=False).update(priority=9 - F("priority"))


class Migration(migrations.Migration):
    dependencies = [("conveyor", "0002_solarschedule_interval_seconds")]

    operations = [
        migrations.RunPython(flip_priorities, flip_priorities),
        migrations.AlterField(
            model_name="periodictask",
            name="priority",
            field=models.PositiveIntegerField(blank=True, default=None,
                                              help_text="0..9, 0 most urgent", null=True,
                                              verbose_name="priority"),
        ),
    ]
