"""Admin pages render, the result admin is read-only, and the actions work."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from conveyor import states
from conveyor.contrib.django.models import (
    ClockedSchedule,
    CrontabSchedule,
    IntervalSchedule,
    PeriodicTask,
    SolarSchedule,
    TaskResult,
)
from conveyor.contrib.django.results import DjangoResultStore
from conveyor.resultstores.record import ResultRecord


@pytest.fixture
def periodic(app: Any) -> PeriodicTask:
    every = IntervalSchedule.objects.create(every=5, period=IntervalSchedule.MINUTES)
    return PeriodicTask.objects.create(name="five", task="tests.django.testapp.tasks.add",
                                       interval=every, args="[2, 3]", queue="orders")


@pytest.fixture
def stored_results(app: Any) -> list[str]:
    store = DjangoResultStore()
    ids = []
    for i, (state, value) in enumerate([(states.SUCCESS, 5), (states.FAILURE, "boom")]):
        record = ResultRecord(task_id=f"r{i}", state=state, result=value,
                              task="tests.django.testapp.tasks.add", args=[i, 1],
                              worker="w1@host", traceback="Traceback: boom" if i else None,
                              exc_type="ValueError" if i else None,
                              exc_module="builtins" if i else None, date_done=1.7e9)
        store.set(record.task_id, state, record.encode(), 60)
        ids.append(record.task_id)
    return ids


def test_periodic_task_pages_render(admin_client: Client, periodic: PeriodicTask) -> None:
    listing = admin_client.get(reverse("admin:conveyor_periodictask_changelist"))
    assert listing.status_code == 200 and b"five" in listing.content
    assert b"every 5 minutes" in listing.content
    add = admin_client.get(reverse("admin:conveyor_periodictask_add"))
    assert add.status_code == 200
    # The task-name picker offers the registered tasks.
    assert b'<datalist id="id_task_choices">' in add.content
    assert b'<option value="tests.django.testapp.tasks.add">' in add.content
    change = admin_client.get(reverse("admin:conveyor_periodictask_change", args=[periodic.pk]))
    assert change.status_code == 200 and b"run_tasks" not in change.content


@pytest.mark.parametrize("model", [IntervalSchedule, CrontabSchedule, ClockedSchedule,
                                   SolarSchedule],
                         ids=lambda m: m.__name__)
def test_schedule_pages_render(admin_client: Client, app: Any, model: Any) -> None:
    name = model._meta.model_name
    assert admin_client.get(reverse(f"admin:conveyor_{name}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:conveyor_{name}_add")).status_code == 200


def test_adding_a_periodic_task_validates_the_schedule(admin_client: Client, app: Any) -> None:
    every = IntervalSchedule.objects.create(every=1, period="hours")
    clock = ClockedSchedule.objects.create(clocked_time="2030-01-01T00:00:00Z")
    url = reverse("admin:conveyor_periodictask_add")
    form = {"name": "n", "task": "tests.django.testapp.tasks.add", "enabled": "on",
            "args": "[1, 2]", "kwargs": "{}", "headers": "{}"}
    none = admin_client.post(url, form)
    assert b"Choose exactly one schedule" in none.content
    clocked_repeating = admin_client.post(url, {**form, "clocked": clock.pk})
    assert b"A clocked schedule runs once" in clocked_repeating.content
    bad_args = admin_client.post(url, {**form, "interval": every.pk, "args": "{}"})
    assert b"must be a JSON list" in bad_args.content
    ok = admin_client.post(url, {**form, "interval": every.pk})
    assert ok.status_code == 302
    assert PeriodicTask.objects.get(name="n").interval == every


def test_run_enable_and_disable_actions(admin_client: Client, app: Any,
                                        periodic: PeriodicTask) -> None:
    url = reverse("admin:conveyor_periodictask_changelist")
    response = admin_client.post(url, {"action": "run_tasks", "_selected_action": [periodic.pk]},
                                 follow=True)
    assert b"Sent 1 task" in response.content
    (delivery,) = app.broker.reserve(["orders"], 1, 30, 1)
    assert b"tests.django.testapp.tasks.add" in delivery.body
    admin_client.post(url, {"action": "disable_tasks", "_selected_action": [periodic.pk]})
    assert not PeriodicTask.objects.get(pk=periodic.pk).enabled
    admin_client.post(url, {"action": "enable_tasks", "_selected_action": [periodic.pk]})
    assert PeriodicTask.objects.get(pk=periodic.pk).enabled


def test_task_results_are_listed_filtered_and_searched(admin_client: Client,
                                                       stored_results: list[str]) -> None:
    url = reverse("admin:conveyor_taskresult_changelist")
    listing = admin_client.get(url)
    assert listing.status_code == 200
    assert b"r0" in listing.content and b"r1" in listing.content
    assert b"By task state" in listing.content or b"task state" in listing.content
    failed = admin_client.get(url, {"status__exact": states.FAILURE})
    assert b"r1" in failed.content and b">r0<" not in failed.content
    searched = admin_client.get(url, {"q": "r0"})
    assert b">r0<" in searched.content and b">r1<" not in searched.content


def test_task_result_admin_is_read_only(admin_client: Client,
                                        stored_results: list[str]) -> None:
    row = TaskResult.objects.get(task_id="r1")
    detail = admin_client.get(reverse("admin:conveyor_taskresult_change", args=[row.pk]))
    assert detail.status_code == 200
    assert b"Traceback: boom" in detail.content and b'name="status"' not in detail.content
    assert admin_client.get(reverse("admin:conveyor_taskresult_add")).status_code == 403
    listing = admin_client.get(reverse("admin:conveyor_taskresult_changelist"))
    assert reverse("admin:conveyor_taskresult_add").encode() not in listing.content
    posted = admin_client.post(reverse("admin:conveyor_taskresult_change", args=[row.pk]),
                               {"status": states.SUCCESS})
    assert posted.status_code == 403
    assert TaskResult.objects.get(pk=row.pk).status == states.FAILURE


def test_redacted_arguments_stay_out_of_the_result_admin(admin_client: Client, app: Any) -> None:
    """django-celery-results keeps Celery's ``argsrepr``/``kwargsrepr`` in ``task_args``/
    ``task_kwargs``; here the task's ``redact`` names and the call's repr options are what
    the columns, the list and the detail page hold, while the task gets the real values."""
    from conveyor._redact import MASK
    from conveyor.testing import run_worker

    planted = "hunter2-planted-in-admin"
    received: list[str] = []

    @app.task(name="tests.django.redacted_login", redact=["password"])
    def login(user: str, password: str) -> str:
        received.append(password)
        return user

    try:
        with run_worker(app, queues=["default"]) as worker:
            first = login.delay("ann", password=planted)
            second = login.apply_async(("bob", planted), argsrepr="('bob', <hidden>)")
            assert first.get(timeout=10) == "ann" and second.get(timeout=10) == "bob"
            worker.join()
    finally:
        app.tasks.pop("tests.django.redacted_login", None)
    assert received == [planted, planted]
    rows = {r.task_id: r for r in TaskResult.objects.filter(task_id__in=[first.id, second.id])}
    assert MASK in (rows[first.id].task_kwargs or "") and planted not in str(vars(rows[first.id]))
    assert "<hidden>" in (rows[second.id].task_args or "")
    assert planted not in str(vars(rows[second.id]))
    pages = [admin_client.get(reverse("admin:conveyor_taskresult_changelist"))]
    pages += [admin_client.get(reverse("admin:conveyor_taskresult_change", args=[r.pk]))
              for r in rows.values()]
    assert all(p.status_code == 200 for p in pages)
    assert all(planted.encode() not in p.content for p in pages)
    assert b"&lt;hidden&gt;" in pages[-1].content or b"&lt;hidden&gt;" in pages[1].content
