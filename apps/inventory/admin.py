from django.contrib import admin

from apps.inventory.models import Item, Reservation


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "on_hand", "reserved", "available"]
    search_fields = ["sku", "name"]


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["order_id", "status", "created_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["=order_id"]
    readonly_fields = ["order_id", "lines", "status", "created_at", "updated_at"]
