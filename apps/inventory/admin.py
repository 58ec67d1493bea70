"""Inventory in the admin: items whose stock counters only services change.

`on_hand` and `reserved` are read-only: reservations and commits change them with F()
updates while an operator's form is open, and saving the form's stale values would
undo them. Saving an item writes only what its form may change (name, price); stock
is counted in or out with the "Adjust stock" page, through `stock_adjust`, audited.
"""

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from apps.inventory import services
from apps.inventory.models import Item, Reservation, StockAdjustment
from apps.mediator import ValidationFailed

COUNTERS = ["on_hand", "reserved"]


class AdjustStockForm(forms.Form):
    delta = forms.IntegerField(label="Units in (+) or out (-)", min_value=-2_000_000_000, max_value=2_000_000_000)
    reason = forms.CharField(max_length=200, help_text="A delivery, a stocktake, breakage…")


class StockAdjustmentInline(admin.TabularInline):
    model = StockAdjustment
    extra = 0
    can_delete = False
    readonly_fields = ["created_at", "delta", "on_hand_after", "reason", "actor"]
    fields = readonly_fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["sku", "name", "price", "on_hand", "reserved", "available"]
    search_fields = ["sku", "name"]
    inlines = [StockAdjustmentInline]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ["reserved"]  # a new item starts with the stock on hand its form says
        return ["sku", *COUNTERS, "adjust_link"]

    @admin.display(description="adjust")
    def adjust_link(self, obj):
        url = reverse("admin:inventory_item_adjust", args=[obj.pk])
        return format_html('<a class="button" href="{}">Adjust stock…</a>', url)

    def save_model(self, request, obj, form, change):
        if not change:
            return super().save_model(request, obj, form, change)
        fields = [name for name in form.changed_data if name not in COUNTERS and name != "sku"]
        if fields:
            obj.save(update_fields=fields)  # never the counters the form was loaded with
        return None

    def get_urls(self):
        adjust = self.admin_site.admin_view(self.adjust_view)
        return [path("<int:object_id>/adjust/", adjust, name="inventory_item_adjust"), *super().get_urls()]

    def adjust_view(self, request, object_id: int):
        item = get_object_or_404(Item, pk=object_id)
        if not self.has_change_permission(request, item):
            raise PermissionDenied
        form = AdjustStockForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                item = services.stock_adjust(
                    sku=item.sku,
                    delta=form.cleaned_data["delta"],
                    reason=form.cleaned_data["reason"],
                    actor=f"admin:{request.user.get_username()}",
                )
            except ValidationFailed as exc:
                for error in exc.errors.get("delta", []) + exc.errors.get("sku", []):
                    form.add_error("delta", error)
            else:
                self.message_user(request, f"{item.sku}: {item.on_hand} on hand now.", messages.SUCCESS)
                return redirect("admin:inventory_item_change", item.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Adjust stock of {item.sku}",
            "opts": Item._meta,
            "original": item,
            "form": form,
        }
        return TemplateResponse(request, "admin/inventory/item/adjust.html", context)


@admin.register(Reservation)
class ReservationAdmin(admin.ModelAdmin):
    list_display = ["order_id", "status", "created_at", "updated_at"]
    list_filter = ["status"]
    search_fields = ["=order_id"]
    readonly_fields = ["order_id", "lines", "status", "created_at", "updated_at"]
