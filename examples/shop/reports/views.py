"""The "Rebuild the catalogue" page: start a long task, then watch its progress bar.

The POST sends the task and ``track()``s it, so only this browser session can
read its progress; the bar page 404s for anyone else, as the JSON view does.
"""

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from conveyor.contrib.django.progress import owns, track
from reports.tasks import rebuild_catalogue


@require_http_methods(["GET", "POST"])
def start(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        fail_at = 8 if request.POST.get("mode") == "fail" else None
        result = rebuild_catalogue.delay(steps=20, fail_at=fail_at)
        return redirect("reports:progress", task_id=track(request, result))
    return render(request, "reports/start.html")


def progress(request: HttpRequest, task_id: str) -> HttpResponse:
    if not owns(request, task_id):
        raise Http404("no such task in this session")
    return render(request, "reports/progress.html", {"task_id": task_id})
