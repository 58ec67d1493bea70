"""The peer's writes: placing an order, and the three saga steps the Celery tasks run.

Each step locks its order (`select_for_update`) and does nothing unless the order is in the
state the step starts from, so a redelivered task (acks_late) repeats no effect.
"""

from celery import chain
from django.db import transaction
from django.utils import timezone

from .models import Item, Order, OrderLine, Payment


class Declined(Exception):
    pass


def charge_card(*, token: str) -> None:
    """The fake provider, with the test tokens ours uses: tok_declined is declined."""
    if token == "tok_declined":  # noqa: S105 (a test card token, not a secret)
        raise Declined("card_declined")


def order_place(*, customer_id: str, lines: list[dict], payment_token: str) -> Order:
    from . import tasks

    with transaction.atomic():
        order = Order.objects.create(customer_id=customer_id, payment_token=payment_token)
        OrderLine.objects.bulk_create(OrderLine(order=order, sku=li["sku"], quantity=li["quantity"]) for li in lines)
        order_id = str(order.id)
        transaction.on_commit(
            lambda: chain(tasks.reserve.si(order_id), tasks.charge.si(order_id), tasks.confirm.si(order_id)).delay()
        )
    return order


def _finish(order: Order, status: str, reason: str = "") -> None:
    order.status, order.reason, order.finished_at = status, reason, timezone.now()
    order.save(update_fields=["status", "reason", "finished_at"])


def _locked_items(order: Order) -> tuple[list[OrderLine], dict[str, Item]]:
    lines = list(order.lines.all())
    skus = sorted({line.sku for line in lines})  # a fixed order: no deadlock between two orders
    return lines, {item.sku: item for item in Item.objects.select_for_update().filter(sku__in=skus).order_by("sku")}


def order_reserve(order_id: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status != Order.Status.PENDING:
            return
        lines, items = _locked_items(order)
        if any(
            line.sku not in items or items[line.sku].on_hand - items[line.sku].reserved < line.quantity
            for line in lines
        ):
            _finish(order, Order.Status.CANCELLED, "out_of_stock")
            return
        for line in lines:
            items[line.sku].reserved += line.quantity
        Item.objects.bulk_update(items.values(), ["reserved"])
        order.status = Order.Status.RESERVED
        order.save(update_fields=["status"])


def order_charge(order_id: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status != Order.Status.RESERVED:
            return
        try:
            charge_card(token=order.payment_token)
        except Declined:
            Payment.objects.create(order=order, status=Payment.Status.DECLINED)
            _release(order)  # the compensation: give the stock back
            _finish(order, Order.Status.CANCELLED, "payment_declined")
            return
        Payment.objects.create(order=order, status=Payment.Status.CAPTURED)
        order.status = Order.Status.CHARGED
        order.save(update_fields=["status"])


def _release(order: Order) -> None:
    lines, items = _locked_items(order)
    for line in lines:
        items[line.sku].reserved -= line.quantity
    Item.objects.bulk_update(items.values(), ["reserved"])


def order_confirm(order_id: str) -> None:
    with transaction.atomic():
        order = Order.objects.select_for_update().get(pk=order_id)
        if order.status != Order.Status.CHARGED:
            return  # cancelled on the way, or confirmed already
        lines, items = _locked_items(order)
        for line in lines:  # the stock leaves: on hand and reserved both drop
            items[line.sku].on_hand -= line.quantity
            items[line.sku].reserved -= line.quantity
        Item.objects.bulk_update(items.values(), ["on_hand", "reserved"])
        _finish(order, Order.Status.CONFIRMED)
