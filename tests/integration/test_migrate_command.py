"""``conveyor migrate``: a Celery + Django project moved over in place (issue 18).

The project in ``tests/data/celery_project`` is laid out as Celery's Django
guide lays one out (``proj/celery.py``, ``CELERY_*`` settings with the
namespace, django-celery-beat and -results installed, Supervisor, systemd,
Procfile, Docker and compose command lines, a requirements file). Each test
copies it, migrates the copy and checks the result: nothing imports Celery
any more, comments survive, what cannot be mapped is reported with file and
line, and the migrated project runs a task on a real worker.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "tests" / "data" / "celery_project"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    copy = tmp_path / "celery_project"
    shutil.copytree(TEMPLATE, copy)
    return copy


def conveyor(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "conveyor", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


def _celery_imports(root: Path) -> list[str]:
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom)
                     and not node.level else [])  # `from .celery import app` is the project's
            found += [f"{path.name}: {n}" for n in names if "celery" in n]
    return found


def test_check_prints_the_diff_and_writes_nothing(project: Path) -> None:
    before = _snapshot(project)
    done = conveyor("migrate", "--check", str(project))
    assert done.returncode == 1, done.stderr  # changes pending, as `ruff --check` says
    assert "-from celery import Celery  # the task app" in done.stdout
    assert "+from conveyor import Conveyor  # the task app" in done.stdout
    assert "would rewrite shop/celery.py" in done.stdout
    assert _snapshot(project) == before


def test_migrate_rewrites_code_settings_commands_and_requirements(project: Path) -> None:
    done = conveyor("migrate", str(project))
    assert done.returncode == 0, done.stderr
    assert _celery_imports(project) == []
    app_module = (project / "shop" / "celery.py").read_text()
    assert "from conveyor import Conveyor  # the task app" in app_module
    assert 'app = Conveyor("shop")' in app_module
    assert "isinstance(value, conveyor.Conveyor)" in (project / "orders" / "checks.py").read_text()
    tasks = (project / "orders" / "tasks.py").read_text()
    assert "# Keep this comment: the rewrite must not touch it (celery stays here)." in tasks
    assert "from conveyor.log import get_task_logger" in tasks
    settings = (project / "shop" / "settings.py").read_text()
    assert settings.count('"conveyor.contrib.django"') == 1
    assert "django_celery_beat\"" not in settings and "django_celery_results" not in settings
    assert "conveyor.contrib.django.schedulers:DatabaseScheduler" in settings
    requirements = (project / "requirements.txt").read_text().splitlines()
    assert requirements == ["Django>=5.2", "conveyor[django,monitor,redis]", "redis>=5.0"]
    procfile = (project / "Procfile").read_text()
    assert "worker: conveyor -A shop worker --loglevel=info -Q default,orders" in procfile
    assert "flower: conveyor -A shop monitor --port=5555" in procfile
    assert 'CMD ["conveyor", "-A", "shop", "worker", "-l", "INFO"]' in (
        project / "Dockerfile").read_text()
    compose = (project / "docker-compose.yml").read_text()
    assert "command: conveyor -A shop worker -l INFO -c 2" in compose
    assert "command: python -m conveyor -A shop beat -l INFO" in compose
    assert "command=/srv/shop/venv/bin/conveyor -A shop beat" in (
        project / "deploy" / "supervisord.conf").read_text()


def test_the_report_names_every_unmapped_thing_with_file_and_line(project: Path) -> None:
    out = conveyor("migrate", str(project)).stdout
    assert ("orders/legacy.py:2: celery.exceptions.CPendingDeprecationWarning has no "
            "counterpart in conveyor.exceptions") in out
    assert "shop/legacy_settings.py:2: CELERY_TASK_ACK_LATE is not a Conveyor setting" in out
    # multi and its node-name paths are Conveyor's too now; a flag it lacks is still named
    assert ("deploy/worker.service:2: option --statedb=/var/lib/celery/%n.state is not "
            "accepted by conveyor multi") in out
    assert "'multi'" not in out and "--pidfile" not in out and "--logfile" not in out
    assert "--without-gossip" not in out  # supervisord.conf's worker line is accepted
    assert "requirements.txt:2: Conveyor is not on PyPI yet" in out
    assert "thing(s) to look at" in out


def test_migrating_twice_changes_nothing_more(project: Path) -> None:
    conveyor("migrate", str(project))
    after = _snapshot(project)
    again = conveyor("migrate", str(project))
    assert again.returncode == 0 and "rewrote" not in again.stdout
    assert _snapshot(project) == after


def test_the_migrated_project_runs_its_task_on_a_real_worker(project: Path) -> None:
    conveyor("migrate", str(project))
    script = (
        "import django\n"
        "django.setup()\n"
        "from shop.celery import app\n"
        "from orders.tasks import add, pipeline\n"
        "from conveyor.testing import run_worker\n"
        "with run_worker(app):\n"
        "    print(add.delay(2, 3).get(timeout=10), pipeline().apply_async().get(timeout=10))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{project}{os.pathsep}{ROOT}",
           "DJANGO_SETTINGS_MODULE": "shop.settings"}
    done = subprocess.run([sys.executable, "-c", script], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "6"]
