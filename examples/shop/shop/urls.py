"""The shop's URLs: the admin (periodic tasks, task results, orders), the catalogue
rebuild page with its progress bar, and the progress JSON its bar polls."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("reports/", include("reports.urls")),
    path("progress/", include("conveyor.contrib.django.progress.urls")),
]
