"""A live Celery + Django project moves over, step by step as docs/switching-over.md says.

The project in ``tests/data/celery_project`` first runs on real Celery (its
Redis, django-celery-beat and django-celery-results): a periodic task is
saved in the admin's tables, tasks are queued and not yet run, a result is
stored.  Then, as the guide says: ``conveyor migrate``, ``manage.py migrate``,
``manage.py conveyor_copy_celery_data``, ``conveyor drain-celery``, and a
Conveyor worker.  Every queued task runs exactly once under its Celery id,
the old result and the periodic task are still there.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests" / "data" / "celery_project"

CELERY_ERA = """
import django
django.setup()
from django_celery_beat.models import IntervalSchedule, PeriodicTask
from shop.celery import app
from orders.tasks import add
every = IntervalSchedule.objects.create(every=10, period="seconds")
PeriodicTask.objects.create(name="add every 10s", task="orders.tasks.add", interval=every,
                            args="[2, 3]", total_run_count=4)
for i in range(5):
    add.apply_async((i, 100), task_id=f"queued-{i}")
add.apply_async((7, 100), task_id="later", countdown=1)
app.backend.store_result("done-before", 42, "SUCCESS")
print("celery era done")
"""

CONVEYOR_ERA = """
import django
django.setup()
from conveyor.contrib.django.models import PeriodicTask
from shop.celery import app
ids = [f"queued-{i}" for i in range(5)] + ["later"]
print(*[app.AsyncResult(i).get(timeout=30) for i in ids])
print(app.AsyncResult("done-before").get(timeout=5))
task = PeriodicTask.objects.get(name="add every 10s")
print(task.task, task.args, task.total_run_count, task.interval.every, task.interval.period)
"""


@pytest.fixture
def project(tmp_path: Path, redis_url: str) -> Path:
    copy = tmp_path / "shop"
    shutil.copytree(TEMPLATE, copy)
    settings = copy / "shop" / "settings.py"
    text = settings.read_text()
    text = text.replace('CELERY_BROKER_URL = "memory://celery-project"',
                        f'CELERY_BROKER_URL = "{redis_url}"')
    text = text.replace('CELERY_RESULT_BACKEND = "memory://celery-project"',
                        'CELERY_RESULT_BACKEND = "django-db"')
    settings.write_text(text)
    return copy


def run(project: Path, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}",
           "DJANGO_SETTINGS_MODULE": "shop.settings"}
    done = subprocess.run([sys.executable, *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{args}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_live_celery_project_moves_over_and_loses_nothing(project: Path, tmp_path: Path,
                                                             redis_url: str) -> None:
    # Before: the project runs on Celery.
    run(project, "manage.py", "migrate", "-v", "0")
    assert "celery era done" in run(project, "-c", CELERY_ERA)
    # The guide, step by step.
    run(project, "-m", "conveyor", "migrate", str(project))
    run(project, "manage.py", "migrate", "-v", "0")
    copied = run(project, "manage.py", "conveyor_copy_celery_data")
    assert "django_celery_beat_periodictask: 1 row(s)" in copied
    assert "django_celery_results_taskresult: 1 row(s)" in copied
    drained = run(project, "-m", "conveyor", "-A", "shop", "drain-celery", redis_url,
                  "-Q", "celery")
    assert "moved 6 task(s)" in drained, drained
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}",
           "DJANGO_SETTINGS_MODULE": "shop.settings"}
    with open(log, "wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "conveyor", "-A", "shop", "worker",
                                   "-l", "INFO", "-c", "2"], cwd=project, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        after = run(project, "-c", CONVEYOR_ERA, timeout=90).splitlines()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(30)
    assert after[0].split() == ["100", "101", "102", "103", "104", "107"]
    assert after[1] == "42"  # stored by Celery, read by Conveyor
    assert after[2] == "orders.tasks.add [2, 3] 4 10 seconds"
    # Exactly once: the task logs its arguments; each pair appears once.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "succeeded" not in log.read_text():
        time.sleep(0.1)
    runs = Counter(re.findall(r"adding (\d+) and 100", log.read_text()))
    assert runs == Counter({"0": 1, "1": 1, "2": 1, "3": 1, "4": 1, "7": 1}), log.read_text()
