from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from apps.orders.models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    readonly_fields = ["sku", "quantity", "unit_price"]
    can_delete = False


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer_id", "status", "reason", "total", "created_at"]
    list_filter = ["status", "reason"]
    search_fields = ["=id", "customer_id"]
    readonly_fields = ["id", "customer_id", "status", "reason", "total", "correlation_id", "history", "created_at"]
    exclude = ["payment_token"]
    inlines = [OrderLineInline]

    @admin.display(description="message history")
    def history(self, obj):
        url = reverse("admin:mediator_message_changelist") + f"?q={obj.correlation_id}"
        return format_html('<a href="{}">every message of this order</a>', url)
