"""Settings for the example shop.  Everything runtime lives in ``var/``."""

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from conveyor.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent
VAR = Path(os.environ.get("SHOP_VAR", BASE_DIR / "var"))

SECRET_KEY = "example-shop-not-a-secret"
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "conveyor.contrib.django",  # explicit: models, admin, connections, on_commit, commands
    "accounts",
    "orders",
    "inventory",
    "newsletter",
    "reports",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "shop.urls"
TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {"context_processors": [
        "django.template.context_processors.request",
        "django.contrib.auth.context_processors.auth",
        "django.contrib.messages.context_processors.messages",
    ]},
}]
# SHOP_DATABASE_URL=postgresql://user@host:port/dbname (``make demo PG=1``) puts the
# shop and its queue in PostgreSQL; otherwise both are SQLite files in var/.
DATABASE_URL = urlsplit(os.environ.get("SHOP_DATABASE_URL", ""))
if DATABASE_URL.scheme.startswith("postgres"):
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": DATABASE_URL.path.lstrip("/"),
            "USER": unquote(DATABASE_URL.username or ""),
            "PASSWORD": unquote(DATABASE_URL.password or ""),
            "HOST": DATABASE_URL.hostname or "",
            "PORT": str(DATABASE_URL.port or ""),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR / "shop.sqlite3",
            # Workers, beat and the web process share the file: WAL lets readers
            # and one writer work at once, IMMEDIATE avoids lock-upgrade failures.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE",
                        "init_command": "PRAGMA journal_mode=WAL;"},
        }
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "Asia/Kathmandu"
STATIC_URL = "static/"
EMAIL_BACKEND = "django.core.mail.backends.filebased.EmailBackend"
EMAIL_FILE_PATH = VAR / "mail"
DEFAULT_FROM_EMAIL = "shop@example.com"

# Where inventory.tasks.sync_inventory reads stock levels (run_demo serves one).
INVENTORY_FEED_URL = os.environ.get("SHOP_INVENTORY_FEED", "http://127.0.0.1:8765/stock.json")

# django.tasks (Django 6 API; the django-tasks package on Django 5.2) on Conveyor workers.
TASKS = {
    "default": {
        "BACKEND": "conveyor.contrib.django.tasks.ConveyorBackend",
        "QUEUES": ["default", "reports"],
    }
}

# --- Conveyor, under the names a Celery project already has -----------------------
if DATABASE_URL.scheme.startswith("postgres"):
    # The queue in the shop's own database, schema "conveyor": a .delay() inside
    # transaction.atomic() is queued with the block's commit, or not at all.
    CELERY_BROKER_URL = DATABASE_URL._replace(query="schema=conveyor").geturl()
else:
    CELERY_BROKER_URL = f"sqlite:///{VAR / 'broker.db'}"  # the embedded broker: nothing to run
CELERY_RESULT_BACKEND = "django-db"                  # results in the admin
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = TIME_ZONE
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "orders.tasks.*": {"queue": "orders"},
    "reports.tasks.*": {"queue": "reports"},
}
# Static schedules; beat writes them into the database, beside the admin's.
CELERY_BEAT_SCHEDULE = {
    "send-daily-digest": {
        "task": "newsletter.tasks.send_daily_digest",
        "schedule": crontab(hour=8, minute=0),
    },
    "cleanup-expired-sessions": {
        "task": "accounts.tasks.cleanup_expired_sessions",
        "schedule": crontab(minute=0),
    },
    "sync-external-inventory": {
        "task": "inventory.tasks.sync_inventory",
        "schedule": 300.0,
    },
}
CELERY_BEAT_SCHEDULER = "conveyor.contrib.django.schedulers:DatabaseScheduler"
CELERY_BEAT_MAX_LOOP_INTERVAL = 1.0  # a demo wants ticks on time; 5 s is fine in production
