"""The message history in the admin: read-only, searchable by the ids support has."""

from django.contrib import admin
from django.utils.html import format_html

from apps.mediator.models import Delivery, Message

STATUS_COLOURS = {
    "pending": "#888",
    "published": "#2a6ebb",
    "handled": "#1a7f37",
    "failed": "#bf8700",
    "dead": "#cf222e",
    "succeeded": "#1a7f37",
    "retrying": "#bf8700",
    "running": "#2a6ebb",
}


def coloured(status: str) -> str:
    return format_html('<b style="color:{}">{}</b>', STATUS_COLOURS.get(status, "#000"), status)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class DeliveryInline(admin.TabularInline):
    model = Delivery
    extra = 0
    can_delete = False
    fields = ["handler", "status", "attempts", "started_at", "finished_at", "duration_ms", "error"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ["id", "type", "kind", "context", "status_badge", "created_at", "correlation_id"]
    list_filter = ["kind", "context", "status", "type"]
    search_fields = ["=id", "=correlation_id", "=causation_id"]
    date_hierarchy = "created_at"
    inlines = [DeliveryInline]
    show_full_result_count = False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return coloured(obj.status)

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            queryset = queryset.defer("payload", "headers", "last_error")
        return queryset


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ["message", "handler", "context", "status_badge", "attempts", "duration_ms", "finished_at"]
    list_filter = ["status", "context"]
    search_fields = ["=message__id", "=message__correlation_id"]
    list_select_related = ["message"]
    show_full_result_count = False

    @admin.display(description="status", ordering="status")
    def status_badge(self, obj):
        return coloured(obj.status)
