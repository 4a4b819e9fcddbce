"""A ``django.tasks`` task: the Django 6 API, run by Conveyor workers (TASKS setting)."""

from django_tasks import task

from accounts.models import Customer


@task(queue_name="default")
def preview_digest(email: str) -> str:
    name = Customer.objects.filter(email=email).values_list("name", flat=True).first()
    return f"Dear {name or 'reader'}, here is what is new today."
