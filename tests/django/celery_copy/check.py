"""Run in a subprocess by test_celery_copy.py: fill Celery's tables, copy twice, read back.

Prints one JSON document with what Conveyor's tables hold after the copies.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import django

django.setup()

from django.core.management import call_command  # noqa: E402
from django_celery_beat import models as beat  # noqa: E402
from django_celery_results import models as results  # noqa: E402

from conveyor import Conveyor  # noqa: E402
from conveyor.contrib.django import models as ours  # noqa: E402
from conveyor.result import AsyncResult, GroupResult  # noqa: E402

LAST_RUN = datetime(2026, 11, 30, 8, 15, tzinfo=UTC)


def fill() -> None:
    """Rows as a Celery project has them, with ids that are not 1, 2, 3."""
    every = beat.IntervalSchedule.objects.create(id=41, every=10, period="seconds")
    cron = beat.CrontabSchedule.objects.create(id=42, minute="30", hour="4",
                                               timezone="Europe/Paris")
    sun = beat.SolarSchedule.objects.create(id=43, event="sunrise", latitude="48.85",
                                            longitude="2.35")
    clock = beat.ClockedSchedule.objects.create(id=44, clocked_time=LAST_RUN + timedelta(1))
    common = {"task": "proj.tasks.report", "last_run_at": LAST_RUN, "total_run_count": 7}
    beat.PeriodicTask.objects.create(id=51, name="every", interval=every, args="[1, 2]",
                                     queue="reports", **common)
    beat.PeriodicTask.objects.create(id=52, name="cron", crontab=cron, enabled=False,
                                     kwargs='{"full": true}', **common)
    beat.PeriodicTask.objects.create(id=53, name="sun", solar=sun, **common)
    beat.PeriodicTask.objects.create(id=54, name="once", clocked=clock, one_off=True, **common)
    done = LAST_RUN
    results.TaskResult.objects.create(task_id="ok-1", status="SUCCESS", result='{"n": 3}',
                                      task_name="proj.tasks.add", task_args="[1, 2]",
                                      date_done=done, content_type="application/json")
    results.TaskResult.objects.create(
        task_id="bad-1", status="FAILURE", task_name="proj.tasks.add", date_done=done,
        result=json.dumps({"exc_type": "ValueError", "exc_message": ["boom"],
                           "exc_module": "builtins"}),
        traceback="Traceback ...\nValueError: boom", content_type="application/json")
    results.TaskResult.objects.create(task_id="pickled-1", status="SUCCESS", result="gASVLg==",
                                      content_type="application/x-python-serialize",
                                      date_done=done)
    results.GroupResult.objects.create(
        group_id="g-1", content_type="application/json", date_done=done,
        result=json.dumps([["g-1", None], [[["ok-1", None], None], [["bad-1", None], None]]]))


def main() -> None:
    call_command("migrate", verbosity=0)
    fill()
    reports = []
    for _ in range(2):
        call_command("conveyor_copy_celery_data", stdout=(out := _Lines()))
        reports.append(out.lines)
    app = Conveyor("copy", broker="memory://copy", backend="django-db", set_as_current=False)
    failure = AsyncResult("bad-1", app=app)
    group = GroupResult.restore("g-1", app=app)
    fresh = ours.IntervalSchedule.objects.create(every=5, period="minutes")
    tasks = {t.name: {"id": t.id, "schedule": [t.interval_id, t.crontab_id, t.solar_id,
                                                t.clocked_id],
                      "last_run_at": t.last_run_at and t.last_run_at.isoformat(),
                      "runs": t.total_run_count,
                      "enabled": t.enabled, "args": t.args, "kwargs": t.kwargs,
                      "queue": t.queue, "one_off": t.one_off}
             for t in ours.PeriodicTask.objects.order_by("id")}
    json.dump({
        "reports": reports,
        "tasks": tasks,
        "schedules": {
            "interval": list(ours.IntervalSchedule.objects.filter(id=41)
                             .values_list("every", "period")),
            "crontab": list(ours.CrontabSchedule.objects.filter(id=42)
                            .values_list("minute", "hour", "timezone")),
            "solar": [[e, str(la), str(lo)] for e, la, lo in ours.SolarSchedule.objects
                      .filter(id=43).values_list("event", "latitude", "longitude")],
        },
        "fresh_interval_id": fresh.id,
        "ok": AsyncResult("ok-1", app=app).get(timeout=1),
        "ok_args": ours.TaskResult.objects.get(task_id="ok-1").task_args,
        "failure": [failure.state, type(failure.result).__name__, str(failure.result)],
        "pickled": AsyncResult("pickled-1", app=app).state,
        "group": [r.id for r in group.results] if group else None,
        "result_rows": ours.TaskResult.objects.count(),
    }, sys.stdout)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> None:
        self.lines.extend(line for line in text.splitlines() if line)

    def flush(self) -> None:
        pass


if __name__ == "__main__":
    main()
