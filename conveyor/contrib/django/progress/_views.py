"""The JSON view the bar polls: one task's progress, for the session that owns it."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from conveyor.contrib.django.progress._info import progress_info
from conveyor.contrib.django.progress._ownership import owns
from conveyor.result import AsyncResult


@require_GET
def task_progress(request: HttpRequest, task_id: str) -> JsonResponse:
    """``GET <task_id>/``: the progress JSON, or 404 when this session did not start it.

    An id someone else started and an id nobody started get the same 404, so
    the answer tells a stranger nothing.  Responses are never cached: each
    poll must reach the result store.
    """
    if not owns(request, task_id):
        response = JsonResponse({"error": "unknown task"}, status=404)
    else:
        from conveyor._state import current_app

        response = JsonResponse(progress_info(AsyncResult(task_id, app=current_app())))
    response["Cache-Control"] = "no-store"
    return response
