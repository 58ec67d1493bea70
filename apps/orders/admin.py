from django.contrib import admin
from django.db.models import Count
from django.urls import reverse, reverse_lazy
from django.utils.html import format_html

from apps.mediator import SagaState, register_panel, register_search
from apps.orders.models import Order, OrderLine


class OrderLineInline(admin.TabularInline):
    model = OrderLine
    extra = 0
    readonly_fields = ["sku", "quantity", "unit_price"]
    can_delete = False


def conversation_link(obj, text):
    if not obj.correlation_id:
        return "—"
    url = reverse("admin:mediator_message_conversation", args=[obj.correlation_id])
    return format_html('<a href="{}">{}</a>', url, text)


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "customer_id", "status", "reason", "total", "created_at", "story"]
    list_filter = ["status", "reason"]
    search_fields = ["=id", "customer_id"]
    readonly_fields = [
        "id",
        "customer_id",
        "status",
        "reason",
        "total",
        "correlation_id",
        "history",
        "saga",
        "created_at",
    ]
    exclude = ["payment_token"]
    inlines = [OrderLineInline]

    @admin.display(description="message history")
    def history(self, obj):
        return conversation_link(obj, "what happened to this order: every message, as a timeline")

    @admin.display(description="saga")
    def saga(self, obj):
        if not obj.correlation_id:
            return "—"
        state = SagaState.objects.filter(correlation_id=obj.correlation_id).only("id", "name", "status").first()
        if state is None:
            return "—"
        url = reverse("admin:mediator_sagastate_change", args=[state.pk])
        return format_html('<a href="{}">{} ({}): its steps as a timeline</a>', url, state.name, state.status)

    @admin.display(description="conversation")
    def story(self, obj):
        return conversation_link(obj, "timeline")


# The message history is searchable by order id, and the dashboard shows orders by
# status, without the mediator importing this context (see apps.mediator.console.extensions).
@register_search
def correlation_ids_of_order(term: str) -> list[str]:
    return list(Order.objects.filter(pk=term).exclude(correlation_id="").values_list("correlation_id", flat=True))


def orders_by_status() -> list[tuple[str, int]]:
    counts = dict(Order.objects.order_by().values_list("status").annotate(n=Count("pk")))
    return [(label, counts.get(value, 0)) for value, label in Order.Status.choices]


register_panel("Orders by status", orders_by_status, link=reverse_lazy("admin:orders_order_changelist"))
