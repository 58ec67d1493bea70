from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models


class Item(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    price = models.DecimalField(max_digits=12, decimal_places=2, validators=[MinValueValidator(Decimal("0"))])
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["sku"]
        constraints = [
            models.CheckConstraint(condition=models.Q(reserved__lte=models.F("on_hand")), name="reserved_le_on_hand"),
        ]

    def __str__(self) -> str:
        return self.sku

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


class Reservation(models.Model):
    """What one order holds; the record that makes reserve/release/commit idempotent."""

    class Status(models.TextChoices):
        RESERVED = "reserved"
        RELEASED = "released"
        COMMITTED = "committed"

    order_id = models.CharField(max_length=64, unique=True)
    lines = models.JSONField()  # [{"sku": ..., "quantity": ...}]
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RESERVED)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.order_id} {self.status}"


class StockAdjustment(models.Model):
    """An audit entry: who changed an item's stock on hand, by how much, and why."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="adjustments")
    delta = models.IntegerField()
    on_hand_after = models.PositiveIntegerField()
    reason = models.CharField(max_length=200)
    actor = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.item_id} {self.delta:+d} by {self.actor}"
