from django.contrib import admin

from reports.models import QueueSnapshot, Report


@admin.register(Report)
class ReportAdmin(admin.ModelAdmin):
    list_display = ("name", "created", "orders", "revenue")


@admin.register(QueueSnapshot)
class QueueSnapshotAdmin(admin.ModelAdmin):
    list_display = ("taken", "depths")
