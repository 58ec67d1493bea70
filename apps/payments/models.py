from django.db import models


class Payment(models.Model):
    class Status(models.TextChoices):
        CAPTURED = "captured"
        DECLINED = "declined"
        REFUNDED = "refunded"

    order_id = models.CharField(max_length=64, db_index=True)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    status = models.CharField(max_length=10, choices=Status.choices)
    reason = models.CharField(max_length=100, blank=True, default="")
    provider_ref = models.CharField(max_length=64, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            # At most one capture per order, whatever the redeliveries.
            models.UniqueConstraint(
                fields=["order_id"], condition=models.Q(status="captured"), name="one_capture_per_order"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.order_id} {self.amount} {self.status}"
