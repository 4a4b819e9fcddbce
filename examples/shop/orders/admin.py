from django.contrib import admin

from orders.models import Order, Product

admin.site.register(Product)


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("pk", "customer", "product", "quantity", "status", "payment_ref")
    list_filter = ("status",)
