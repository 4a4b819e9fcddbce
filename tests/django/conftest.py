"""pytest-django for tests/django only.

Django is configured here, when this directory is collected, with
``settings.configure()`` from ``tests/django/settings.py`` — not through
``DJANGO_SETTINGS_MODULE``, which would leak into every subprocess the rest of
the suite starts.  Tests outside tests/django never import this file.

``CONVEYOR_DJANGO_DB=postgres`` runs everything on PostgreSQL;
``test_postgres.py`` does that in a subprocess during a normal run.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
ON_POSTGRES = os.environ.get("CONVEYOR_DJANGO_DB") == "postgres"


def _configure() -> None:
    if settings.configured:
        return
    from tests.django import settings as test_settings

    values = {name: getattr(test_settings, name) for name in dir(test_settings)
              if name.isupper()}
    settings.configure(**values)
    django.setup()


_configure()


@pytest.fixture(scope="session", autouse=True)
def _no_stray_sessions(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """End sessions other threads and processes left open, so the test database can be
    dropped (PostgreSQL refuses to drop a database in use)."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.fixture
def app(transactional_db: None) -> Iterator[Any]:
    """The test project's app on a fresh in-memory broker; results in the test database."""
    from tests.django.proj import app as project_app

    saved = copy.deepcopy(project_app.conf)
    url = f"memory://django-{uuid.uuid4().hex}"
    project_app.config_from_object({"broker_url": url}, namespace=None)
    project_app.set_current()
    yield project_app
    # Closed, not only dropped: a RabbitMQ connection left open keeps its consumer,
    # and the messages RabbitMQ pushes to it, from the next test's worker.
    project_app.close()
    project_app.conf = saved
    project_app.config_from_object({}, namespace=None)


@pytest.fixture(params=["memory", "amqp"])
def broker_app(request: pytest.FixtureRequest, app: Any) -> Any:
    """``app``, and ``app`` on RabbitMQ (its side store in the test's folder, results
    still in Django's database), for the tests whose subject is broker behaviour:
    sends at commit, a worker's results."""
    if request.param == "amqp":
        app.config_from_object({"broker_url": request.getfixturevalue("amqp_url")},
                               namespace=None)
    return app


@pytest.fixture
def db_name() -> str:
    """The test database's name, for subprocesses (created by pytest-django)."""
    from django.db import connection

    return str(connection.settings_dict["NAME"])


class Processes:
    """Subprocesses (worker, beat, manage.py) that a test starts and always stops."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str, extra_env: dict[str, str] | None = None,
              output: Path | None = None) -> subprocess.Popen[str]:
        stream = open(output, "w") if output else subprocess.DEVNULL  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env={**self.env, **(extra_env or {})},
            stdout=stream, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.procs.append(proc)
        return proc

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def processes(transactional_db: None, db_name: str, tmp_path: Path) -> Iterator[Processes]:
    """Start processes against the test database and a SQLite broker in ``tmp_path``."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.settings",
        "CONVEYOR_DJANGO_DB_NAME": db_name,
        "CONVEYOR_TEST_BROKER": f"sqlite:///{tmp_path / 'broker.db'}",
        "PYTHONPATH": str(ROOT),
        "CONVEYOR_APP": "tests.django.proj",  # manage.py commands find the app by it
    }
    procs = Processes(env)
    yield procs
    procs.stop_all()


@pytest.fixture(params=["sqlite", "amqp"])
def broker_processes(request: pytest.FixtureRequest, processes: Processes) -> Processes:
    """``processes``, and the same on RabbitMQ: worker processes of the project."""
    if request.param == "amqp":
        processes.env["CONVEYOR_TEST_BROKER"] = str(request.getfixturevalue("amqp_url"))
    return processes


def wait_for(predicate: Callable[[], Any], timeout: float, what: str,
             interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
