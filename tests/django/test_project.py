"""The project layout Celery users know, worker processes, and the management commands."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from conveyor import states
from conveyor.contrib.django.models import TaskResult
from conveyor.contrib.django.tasks import RUNNER
from tests.django.conftest import Processes, wait_for
from tests.django.testapp.models import Touch
from tests.django.testapp.tasks import add, routed_report, touch


def test_settings_come_through_the_celery_namespace(app: Any) -> None:
    conf = app.conf
    assert conf.result_backend == "django-db"
    assert conf.task_routes == {"tests.django.testapp.tasks.routed_*": {"queue": "orders"}}
    assert "settings-tick" in conf.beat_schedule


def test_autodiscovery_finds_tasks_in_installed_apps(app: Any) -> None:
    app.finalize()
    assert {add.name, touch.name, RUNNER} <= set(app.tasks)


def test_routes_apply(app: Any) -> None:
    routed_report.delay("x")
    assert [s.ready for s in app.broker.stats(["orders"])] == [1]


def test_a_worker_process_sets_django_up_before_importing_tasks(
        app: Any, broker_processes: Processes, tmp_path: Path) -> None:
    """tasks.py imports models at module level; the prefork worker runs it on the test DB
    (on SQLite and on RabbitMQ)."""
    processes = broker_processes
    log = tmp_path / "worker.log"
    worker = processes.start("-m", "conveyor", "-A", "tests.django.proj", "worker", "-Q",
                             "default,orders", "-c", "2", "-P", "prefork", "-l", "INFO",
                             output=log)
    app.config_from_object({"broker_url": processes.env["CONVEYOR_TEST_BROKER"]},
                           namespace=None)
    results = [touch.delay(f"w{i}") for i in range(4)]
    assert all(r.get(timeout=60)["count"] >= 1 for r in results), log.read_text()
    assert Touch.objects.filter(key__startswith="w").count() == 4
    assert routed_report.delay("q").get(timeout=30) == "report q"
    done = TaskResult.objects.filter(task_id__in=[r.id for r in results])
    assert {row.status for row in done} == {states.SUCCESS}
    assert worker.poll() is None


def test_manage_py_worker_command(app: Any, processes: Processes, tmp_path: Path) -> None:
    """``manage.py conveyor_worker`` is ``conveyor -A <project app> worker``."""
    log = tmp_path / "manage-worker.log"
    processes.start("-m", "django", "conveyor_worker", "-Q", "default", "-c", "1",
                    "-P", "threads", output=log)
    app.config_from_object({"broker_url": processes.env["CONVEYOR_TEST_BROKER"]},
                           namespace=None)
    result = touch.delay("manage")
    wait_for(lambda: result.ready(), 60, f"the task to run; log:\n{log.read_text()}")
    assert Touch.objects.filter(key="manage").exists()


def test_manage_py_help_lists_the_cli(processes: Processes) -> None:
    done = processes.run("-m", "django", "conveyor", "--help")
    assert done.returncode == 0, done.stderr
    assert "worker" in done.stdout and "beat" in done.stdout
    beat_help = processes.run("-m", "django", "conveyor_beat", "--help")
    assert beat_help.returncode == 0 and "--scheduler" in beat_help.stdout


def test_call_command_runs_cli_commands(app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    add.delay(1, 2)
    call_command("conveyor", "queues", stdout=io.StringIO())
    out = capsys.readouterr().out
    assert "default" in out and "ready" in out
    with pytest.raises(CommandError):
        call_command("conveyor", "no-such-command")


@pytest.mark.parametrize(("given", "expected"), [
    (["-Q", "x"], ["-A", "SPEC", "worker", "-Q", "x"]),
    (["-A", "other", "-Q", "x"], ["-A", "other", "worker", "-Q", "x"]),
    (["-Aother", "-c", "1"], ["-Aother", "worker", "-c", "1"]),
    (["--app=other"], ["--app=other", "worker"]),
])
def test_worker_command_puts_the_app_first(given: list[str], expected: list[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.contrib.django import management
    from conveyor.contrib.django.management.commands.conveyor_worker import Command

    monkeypatch.delenv("CONVEYOR_APP", raising=False)
    monkeypatch.setattr(management, "find_app_spec", lambda: "SPEC")
    assert Command()._arguments(management._with_app(given)) == expected


def test_the_imported_app_is_found(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor.contrib.django.management import find_app_spec

    spec = find_app_spec()
    module, _, attr = spec.partition(":")
    import importlib

    assert getattr(importlib.import_module(module), attr) is app


def test_conveyor_tasks_lists_what_autodiscovery_finds(processes: Processes) -> None:
    """Issue 16: Celery users list tasks with ``celery inspect registered``; here
    ``conveyor tasks`` does it without a worker, after Django's autodiscovery
    (the test app's tasks are imported by nothing but ``autodiscover_tasks()``),
    with each task's queue as routing sends it; ``report`` counts the same."""
    done = processes.run("-m", "conveyor", "-A", "tests.django.proj", "tasks", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["name"]: row for row in json.loads(done.stdout)}
    assert rows["tests.django.testapp.tasks.add"]["queue"] == "default"
    assert rows["tests.django.testapp.tasks.routed_report"]["queue"] == "orders"
    assert not any(name.startswith("conveyor.") for name in rows)
    text = processes.run("-m", "conveyor", "-A", "tests.django.proj", "tasks").stdout
    assert "tests.django.testapp.tasks.routed_report  queue=orders" in text
    assert text.strip().endswith(f"{len(rows)} tasks")
    report = processes.run("-m", "conveyor", "-A", "tests.django.proj", "report").stdout
    assert f"app: proj  tasks: {len(rows)}" in report
