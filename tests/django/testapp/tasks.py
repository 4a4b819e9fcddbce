"""Tasks for the Django tests.  Models are imported at module level on purpose:
worker and beat set Django up before autodiscovery imports this module."""

from __future__ import annotations

import os
import threading
from typing import Any

from django.db import connection

from conveyor import shared_task
from tests.django.testapp.models import Order, Touch


def _backend_pid() -> int | None:
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return int(cursor.fetchone()[0])


@shared_task
def add(x: int, y: int) -> int:
    return x + y


@shared_task
def touch(key: str) -> dict[str, Any]:
    row = Touch.objects.create(key=key, pid=os.getpid(), backend_pid=_backend_pid())
    return {"pid": row.pid, "backend_pid": row.backend_pid, "count": Touch.objects.count()}


@shared_task
def process_order(order_id: int) -> str:
    order = Order.objects.get(pk=order_id)
    order.status = "processed"
    order.save(update_fields=["status"])
    return order.number


@shared_task
def routed_report(name: str) -> str:
    return f"report {name}"


#: Lets tests/django/test_progress.py see a task mid-way (set it to let the task finish).
progress_gate = threading.Event()


@shared_task(bind=True)
def counted(self: Any, steps: int, wait_at: int | None = None, fail_at: int | None = None) -> str:
    """Reports each step with ``ProgressRecorder``; may wait or fail part-way."""
    from conveyor.contrib.django.progress import ProgressRecorder

    recorder = ProgressRecorder(self)
    for step in range(steps):
        if step == fail_at:
            raise ValueError(f"step {step} broke")
        recorder.set_progress(step + 1, steps, description=f"step {step + 1}")
        if step + 1 == wait_at and not progress_gate.wait(10):
            raise TimeoutError("the test never opened the gate")
    return f"counted {steps}"
