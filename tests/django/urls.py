"""URLs for the Django tests: the admin, and progress bars (test_progress.py)."""

from django.contrib import admin
from django.urls import include, path

from tests.django.testapp.views import start_counting

urlpatterns = [
    path("admin/", admin.site.urls),
    path("progress/", include("conveyor.contrib.django.progress.urls")),
    path("start-counting/", start_counting),
]
