from django.contrib import admin

from apps.payments.models import Payment


@admin.register(Payment)
class PaymentAdmin(admin.ModelAdmin):
    list_display = ["id", "order_id", "amount", "status", "reason", "created_at"]
    list_filter = ["status"]
    search_fields = ["=order_id"]
    readonly_fields = ["order_id", "amount", "status", "reason", "provider_ref", "created_at", "updated_at"]
