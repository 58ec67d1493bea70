"""Order writes.

The writes a handler calls are atomic without a savepoint of their own: inside a handler
the dispatcher's savepoint is the one a failure rolls back to, and one per service would
cost two more round trips per saga step. Nothing catches their errors and carries on."""

from decimal import Decimal

from django.db import transaction

from apps.orders.models import Order, OrderLine


@transaction.atomic(savepoint=False)  # all or nothing with its caller: no savepoint round trips
def order_create(
    *,
    customer_id: str,
    lines,
    prices: dict[str, Decimal],
    payment_token: str,
    correlation_id: str,
    owner_id: int | None = None,
) -> Order:
    total = sum((prices[line.sku] * line.quantity for line in lines), Decimal("0"))
    order = Order.objects.create(
        customer_id=customer_id,
        total=total,
        payment_token=payment_token,
        correlation_id=correlation_id,
        owner_id=owner_id,
    )
    OrderLine.objects.bulk_create(
        OrderLine(order=order, sku=line.sku, quantity=line.quantity, unit_price=prices[line.sku]) for line in lines
    )
    return order


def _finish(order_id: str, status: str, reason: str = "") -> Order | None:
    """Move a pending order to a final status; None if it was already final."""
    order = Order.objects.select_for_update().get(pk=order_id)
    if order.status != Order.Status.PENDING:
        return None
    order.status = status
    order.reason = reason
    order.save(update_fields=["status", "reason", "updated_at"])
    return order


@transaction.atomic(savepoint=False)
def order_confirm(*, order_id: str) -> Order | None:
    return _finish(order_id, Order.Status.CONFIRMED)


@transaction.atomic(savepoint=False)
def order_cancel(*, order_id: str, reason: str) -> Order | None:
    return _finish(order_id, Order.Status.CANCELLED, reason)
