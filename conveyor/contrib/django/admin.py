"""Admin pages: periodic tasks (editable, with "run now") and task results (read-only).

Periodic tasks: the task field suggests the names registered in the
project's Conveyor app (typing any other name is allowed: the worker may
know tasks this web process does not), and the actions are
django-celery-beat's: enable, disable, toggle, or run the selected tasks
now.  Disabling forgets the last run, as django-celery-beat does, so a task
enabled again starts afresh.  Changes are picked up by a running beat within
a few seconds.

Task results are written by workers, so their admin shows and searches them
but offers no way to add or edit one.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Case, DateTimeField, F, QuerySet, Value, When
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from conveyor._serialization import from_jsonable
from conveyor.contrib.django.models import (
    ClockedSchedule,
    CrontabSchedule,
    GroupResult,
    IntervalSchedule,
    PeriodicTask,
    PeriodicTasks,
    SolarSchedule,
    TaskResult,
)


def conveyor_app() -> Any:
    """The project's app (the one ``proj/__init__.py`` imported)."""
    from conveyor._state import current_app

    return current_app()


def registered_task_names() -> list[str]:
    """Every task name the app knows, after autodiscovery."""
    app = conveyor_app()
    app.finalize()
    return sorted(app.tasks)


class TaskNameInput(forms.TextInput):
    """A text input with the registered names as suggestions (an HTML datalist).

    Rendered in code rather than a template so the package needs no data files.
    """

    def render(self, name: str, value: Any, attrs: dict[str, Any] | None = None,
               renderer: Any = None) -> SafeString:
        list_id = f"{(attrs or {}).get('id', name)}_choices"
        field = super().render(name, value, {**(attrs or {}), "list": list_id}, renderer)
        options = format_html_join("", '<option value="{}">', ((n,) for n in
                                                               registered_task_names()))
        return format_html('{}<datalist id="{}">{}</datalist>', field, list_id, options)


class PeriodicTaskForm(forms.ModelForm):
    class Meta:
        model = PeriodicTask
        fields = "__all__"
        widgets = {
            "task": TaskNameInput(attrs={"size": 60, "autocomplete": "off"}),
            "args": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "kwargs": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "headers": forms.Textarea(attrs={"rows": 2, "cols": 60}),
            "description": forms.Textarea(attrs={"rows": 2, "cols": 60}),
        }


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):
    form = PeriodicTaskForm
    list_display = ("name", "task", "schedule_description", "enabled", "one_off", "queue",
                    "last_run_at", "total_run_count", "from_settings")
    list_filter = ("enabled", "one_off", "from_settings", "task", "queue")
    search_fields = ("name", "task", "description")
    readonly_fields = ("last_run_at", "total_run_count", "date_changed", "from_settings")
    actions = ("enable_tasks", "disable_tasks", "toggle_tasks", "run_tasks")
    list_select_related = ("interval", "crontab", "solar", "clocked")
    fieldsets = (
        (None, {"fields": ("name", "task", "enabled", "description")}),
        (_("Schedule"), {"fields": ("interval", "crontab", "solar", "clocked", "start_time",
                                    "expires", "one_off"),
                         "description": _("Choose exactly one of interval, crontab, solar "
                                          "or clocked.")}),
        (_("Arguments"), {"fields": ("args", "kwargs")}),
        (_("Sending"), {"fields": ("queue", "priority", "expire_seconds", "headers",
                                   "exchange", "routing_key"),
                        "classes": ("collapse",)}),
        (_("History"), {"fields": ("last_run_at", "total_run_count", "date_changed",
                                   "from_settings")}),
    )

    @admin.display(description=_("schedule"))
    def schedule_description(self, obj: PeriodicTask) -> str:
        return obj.schedule_description

    @admin.action(description=_("Run selected tasks"))
    def run_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        app = conveyor_app()
        sent: list[str] = []
        for row in queryset:
            try:
                args = from_jsonable(json.loads(row.args or "[]"))
                kwargs = from_jsonable(json.loads(row.kwargs or "{}"))
            except ValueError as exc:
                self.message_user(request, f"{row.name}: bad arguments ({exc})", messages.ERROR)
                continue
            options: dict[str, Any] = {"queue": row.queue} if row.queue else {}
            result = app.send_task(row.task, args, kwargs,
                                   headers={"periodic_task_name": row.name}, **options)
            sent.append(f"{row.name} → {result.id}")
        if sent:
            self.message_user(request, ngettext("Sent %(n)d task: %(ids)s",
                                                "Sent %(n)d tasks: %(ids)s", len(sent))
                              % {"n": len(sent), "ids": "; ".join(sent)}, messages.SUCCESS)

    @admin.action(description=_("Enable selected tasks"))
    def enable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._report(request, queryset.update(enabled=True), _("enabled"))

    @admin.action(description=_("Disable selected tasks"))
    def disable_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        self._report(request, queryset.update(enabled=False, last_run_at=None), _("disabled"))

    @admin.action(description=_("Toggle activity of selected tasks"))
    def toggle_tasks(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        # One statement, so a task changed meanwhile is flipped from what it is now.
        # Tasks it disables forget their last run, as the disable action's do.
        count = queryset.update(
            enabled=Case(When(enabled=True, then=Value(False)), default=Value(True)),
            last_run_at=Case(When(enabled=True, then=Value(None, output_field=DateTimeField())),
                             default=F("last_run_at")),
        )
        self._report(request, count, _("toggled"))

    def _report(self, request: HttpRequest, count: int, word: Any) -> None:
        PeriodicTasks.update_changed()
        self.message_user(request, ngettext("%(n)d task %(word)s", "%(n)d tasks %(word)s", count)
                          % {"n": count, "word": word}, messages.SUCCESS)


@admin.register(IntervalSchedule)
class IntervalScheduleAdmin(admin.ModelAdmin):
    list_display = ("__str__", "every", "period")
    list_filter = ("period",)


@admin.register(CrontabSchedule)
class CrontabScheduleAdmin(admin.ModelAdmin):
    list_display = ("__str__", "minute", "hour", "day_of_month", "month_of_year",
                    "day_of_week", "timezone")
    list_filter = ("timezone",)


@admin.register(ClockedSchedule)
class ClockedScheduleAdmin(admin.ModelAdmin):
    list_display = ("__str__", "clocked_time")


@admin.register(SolarSchedule)
class SolarScheduleAdmin(admin.ModelAdmin):
    list_display = ("__str__", "event", "latitude", "longitude")
    list_filter = ("event",)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by workers: view, filter, search and delete only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(TaskResult)
class TaskResultAdmin(ReadOnlyAdmin):
    date_hierarchy = "date_done"
    list_display = ("task_id", "task_name", "colored_status", "worker", "queue", "retries",
                    "date_created", "date_done")
    list_filter = ("status", "task_name", "worker", "queue", "date_done")
    search_fields = ("task_id", "task_name", "task_args", "task_kwargs", "result", "worker")
    exclude = ("payload",)
    readonly_fields = ("task_id", "task_name", "status", "worker", "queue", "retries",
                       "task_args", "task_kwargs", "result", "traceback", "meta",
                       "content_type", "content_encoding", "periodic_task_name",
                       "date_created", "date_started", "date_done", "expires_at")
    fieldsets = (
        (None, {"fields": ("task_id", "task_name", "status", "worker", "queue", "retries",
                           "periodic_task_name")}),
        (_("Call"), {"fields": ("task_args", "task_kwargs")}),
        (_("Outcome"), {"fields": ("result", "traceback", "meta", "content_type",
                                   "content_encoding")}),
        (_("Times"), {"fields": ("date_created", "date_started", "date_done", "expires_at")}),
    )

    _COLORS = {"SUCCESS": "#2e7d32", "FAILURE": "#c62828", "REVOKED": "#6d4c41",
               "RETRY": "#ef6c00", "STARTED": "#1565c0"}

    @admin.display(description=_("state"), ordering="status")
    def colored_status(self, obj: TaskResult) -> str:
        color = self._COLORS.get(obj.status, "#555")
        return format_html('<b style="color:{}">{}</b>', color, obj.status)


@admin.register(GroupResult)
class GroupResultAdmin(ReadOnlyAdmin):
    list_display = ("group_id", "date_created", "date_done")
    search_fields = ("group_id", "result")
    exclude = ("payload",)
    readonly_fields = ("group_id", "result", "content_type", "content_encoding",
                       "date_created", "date_done", "expires_at")

__all__: list[str] = []  # registers ModelAdmins with the admin site; nothing to import
