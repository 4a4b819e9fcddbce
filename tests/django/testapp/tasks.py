"""Tasks for the Django tests.  Models are imported at module level on purpose:
worker and beat set Django up before autodiscovery imports this module."""

from __future__ import annotations

import os
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
