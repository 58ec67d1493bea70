import uuid

from django.db import models


class Item(models.Model):
    sku = models.CharField(max_length=64, unique=True)
    on_hand = models.PositiveIntegerField(default=0)
    reserved = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(reserved__lte=models.F("on_hand")), name="shop_reserved_le_on_hand"
            )
        ]

    def __str__(self) -> str:
        return self.sku


class Order(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RESERVED = "reserved"  # stock held
        CHARGED = "charged"  # payment captured
        CONFIRMED = "confirmed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    customer_id = models.CharField(max_length=64)
    payment_token = models.CharField(max_length=64)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    reason = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)  # confirmed or cancelled

    def __str__(self) -> str:
        return f"order {self.id} ({self.status})"


class OrderLine(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="lines")
    sku = models.CharField(max_length=64)
    quantity = models.PositiveIntegerField()

    def __str__(self) -> str:
        return f"{self.quantity} x {self.sku}"


class Payment(models.Model):
    class Status(models.TextChoices):
        CAPTURED = "captured"
        DECLINED = "declined"

    order = models.OneToOneField(Order, on_delete=models.CASCADE, related_name="payment")  # one charge per order
    status = models.CharField(max_length=10, choices=Status.choices)

    def __str__(self) -> str:
        return f"{self.order_id} {self.status}"
