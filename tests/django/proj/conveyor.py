"""The test project's app, laid out as a Celery user's ``proj/celery.py`` is."""

from __future__ import annotations

import os

from conveyor import Conveyor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")

app = Conveyor("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
