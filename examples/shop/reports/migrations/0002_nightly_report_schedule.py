"""A periodic task kept in the database (editable in the admin), added by a migration."""

from django.db import migrations


def add_schedule(apps, schema_editor):
    CrontabSchedule = apps.get_model("conveyor", "CrontabSchedule")
    PeriodicTask = apps.get_model("conveyor", "PeriodicTask")
    nightly, _ = CrontabSchedule.objects.get_or_create(
        minute="0", hour="2", day_of_week="*", day_of_month="*", month_of_year="*",
        timezone="Asia/Kathmandu")
    PeriodicTask.objects.get_or_create(
        name="nightly-sales-report",
        defaults={"task": "reports.tasks.generate_sales_report", "crontab": nightly,
                  "kwargs": '{"name": "nightly"}',
                  "description": "Added by reports/migrations/0002; edit it in the admin."})


def remove_schedule(apps, schema_editor):
    apps.get_model("conveyor", "PeriodicTask").objects.filter(
        name="nightly-sales-report").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("reports", "0001_initial"),
        ("conveyor", "0001_initial"),
    ]

    operations = [migrations.RunPython(add_schedule, remove_schedule)]
