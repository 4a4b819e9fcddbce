"""Django settings for the Conveyor Django tests (and their worker/beat subprocesses).

``CONVEYOR_DJANGO_DB=postgres`` selects PostgreSQL (``CONVEYOR_TEST_PG`` is the
DSN), else SQLite.  ``CONVEYOR_DJANGO_DB_NAME`` points a subprocess at the test
database the pytest process created; ``CONVEYOR_TEST_BROKER`` picks its broker.
Nothing here imports the Conveyor app, so the tests can configure Django first.
"""

from __future__ import annotations

import os
import tempfile
from urllib.parse import urlparse

DB_KIND = os.environ.get("CONVEYOR_DJANGO_DB", "sqlite")
PG_DSN = os.environ.get("CONVEYOR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
DB_NAME = os.environ.get("CONVEYOR_DJANGO_DB_NAME")
CONN_MAX_AGE = float(os.environ.get("CONVEYOR_TEST_CONN_MAX_AGE", "0"))


def _database() -> dict[str, object]:
    if DB_KIND == "postgres":
        dsn = urlparse(PG_DSN)
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DB_NAME or dsn.path.lstrip("/") or "test",
            "USER": dsn.username or "postgres",
            "PASSWORD": dsn.password or "",
            "HOST": dsn.hostname or "127.0.0.1",
            "PORT": dsn.port or 5432,
            "CONN_MAX_AGE": CONN_MAX_AGE,
            # One test database per pytest process: several suites may run at once.
            "TEST": {"NAME": f"test_conveyor_{os.getpid()}"},
        }
    test_file = os.path.join(tempfile.gettempdir(), f"conveyor-django-{os.getpid()}.sqlite3")
    return {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DB_NAME or test_file,
        "CONN_MAX_AGE": CONN_MAX_AGE,
        # A file, not memory: worker subprocesses and threads share it.
        "TEST": {"NAME": test_file},
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL;"},
    }


SECRET_KEY = "conveyor-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django_tasks",
    "conveyor.contrib.django",
    "tests.django.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.django.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.tasks.ConveyorBackend",
        "QUEUES": ["default", "emails"],
    },
}

# Conveyor, read with namespace="CELERY" as a migrated project would.
CELERY_BROKER_URL = os.environ.get("CONVEYOR_TEST_BROKER", "memory://django-tests")
CELERY_RESULT_BACKEND = "django-db"
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ROUTES = {"tests.django.testapp.tasks.routed_*": {"queue": "orders"}}
CELERY_BEAT_MAX_LOOP_INTERVAL = 1.0
CELERY_BEAT_SCHEDULE = {
    "settings-tick": {
        "task": "tests.django.testapp.tasks.add",
        "schedule": 3600.0,
        "args": (1, 2),
        "options": {"queue": "beat"},
    },
}
if os.environ.get("CONVEYOR_TEST_BEAT_SCHEDULE") == "none":
    CELERY_BEAT_SCHEDULE = {}
# Fast hashing: the admin tests log in.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
