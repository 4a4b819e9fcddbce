"""``django.tasks`` tasks for the ConveyorBackend tests."""

from __future__ import annotations

import asyncio

from django_tasks import TaskContext, task

from tests.django.testapp.models import Touch


@task
def multiply(x: int, y: int) -> int:
    return x * y


@task(priority=50, queue_name="emails")
def send_email(address: str) -> dict[str, str]:
    Touch.objects.create(key=f"email:{address}", pid=0)
    return {"to": address}


@task(takes_context=True)
def attempt_plus(context: TaskContext, n: int) -> int:
    return context.attempt + n


@task
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0)
    return x + y


@task
def explode() -> None:
    raise ValueError("boom")
