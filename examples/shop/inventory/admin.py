from django.contrib import admin

from inventory.models import StockItem


@admin.register(StockItem)
class StockItemAdmin(admin.ModelAdmin):
    list_display = ("sku", "quantity", "synced_at")
