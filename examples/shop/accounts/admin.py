from django.contrib import admin

from accounts.models import Customer, EmailLog

admin.site.register(Customer)


@admin.register(EmailLog)
class EmailLogAdmin(admin.ModelAdmin):
    list_display = ("customer", "kind", "sent_at")
