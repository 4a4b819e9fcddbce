"""The shop's URLs: the admin (periodic tasks, task results, orders)."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
