"""``path("progress/", include("conveyor.contrib.django.progress.urls"))``.

Serves ``<task_id>/`` as JSON, named ``conveyor_progress:task_status``
(celery-progress's ``celery_progress:task_status``).
"""

from django.urls import path

from conveyor.contrib.django.progress._views import task_progress

app_name = "conveyor_progress"
urlpatterns = [path("<str:task_id>/", task_progress, name="task_status")]

__all__ = ["app_name", "urlpatterns"]
