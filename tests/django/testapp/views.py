"""A view that starts a task the way a project's page would, for test_progress.py."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from conveyor.contrib.django.progress import track
from tests.django.testapp.tasks import counted


def start_counting(request: HttpRequest) -> JsonResponse:
    options = {key: int(request.POST[key]) for key in ("wait_at", "fail_at")
               if key in request.POST}
    result = counted.delay(int(request.POST.get("steps", "4")), **options)
    return JsonResponse({"task_id": track(request, result)})
