"""The app case 5's workers load (``-A tests.faults.django_app``): Django on PostgreSQL.

It reuses the Django test project's settings (``tests/django/settings.py``,
selected by ``CONVEYOR_DJANGO_DB=postgres`` and ``CONVEYOR_DJANGO_DB_NAME``):
results go to the ``django-db`` store, and the task writes a ``Touch`` row
through the ORM inside a transaction, writing its ledger lines around it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.db import InterfaceError, OperationalError

from conveyor import Conveyor
from tests.faults.tasklog import record

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.django.settings")

app = Conveyor("fault_django")
app.config_from_object("django.conf:settings", namespace="CELERY")


@app.task(bind=True, autoretry_for=(OperationalError, InterfaceError),
          retry_kwargs={"countdown": 0.2, "max_retries": 10})
def orm_touch(self: Any, key: str, seconds: float) -> int:
    """One ``Touch`` row per run, committed only if the whole transaction got through.

    A backend terminated mid-transaction raises a database error here; the
    task retries (``autoretry_for``) on a fresh connection.
    """
    from django.db import connection, transaction

    from tests.django.testapp.models import Touch

    record("start")
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = int(cursor.fetchone()[0])
        Touch.objects.create(key=key, pid=os.getpid(), backend_pid=backend)
        time.sleep(seconds)  # the transaction stays open: a good moment to be terminated
    record("end")
    return backend
