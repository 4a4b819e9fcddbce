"""``{% load conveyor_progress %}{% progress_bar task_id %}``: a bar that follows a task.

Renders ``conveyor/progress_bar.html`` (a ``role="progressbar"`` element and a
polite live region for the message) with the script and stylesheet it needs;
the script finds the bar by its ``data-conveyor-progress`` URL, so it works
under a Content-Security-Policy that forbids inline scripts.
"""

from __future__ import annotations

from typing import Any

from django import template
from django.urls import reverse

register = template.Library()


@register.inclusion_tag("conveyor/progress_bar.html")
def progress_bar(task_id: Any, label: str = "Task progress") -> dict[str, Any]:
    task_id = str(getattr(task_id, "id", task_id))
    return {"task_id": task_id, "label": label,
            "url": reverse("conveyor_progress:task_status", args=[task_id])}
