"""Inventory writes. Row locks are taken in SKU order so concurrent
reservations never deadlock on each other.

The writes a handler calls are atomic without a savepoint of their own: inside a handler
the dispatcher's savepoint is the one a failure rolls back to, and one per service would
cost two more round trips per saga step. Nothing catches their errors and carries on."""

from collections import Counter
from decimal import Decimal

from django.db import transaction
from django.db.models import F

from apps.inventory.models import Item, Reservation, StockAdjustment
from apps.mediator import Conflict, ValidationFailed


def item_create(*, sku: str, name: str, price: Decimal, on_hand: int) -> Item:
    if Item.objects.filter(sku=sku).exists():
        raise ValidationFailed({"sku": [f"An item with SKU {sku!r} already exists."]})
    return Item.objects.create(sku=sku, name=name, price=price, on_hand=on_hand)


@transaction.atomic
def stock_adjust(*, sku: str, delta: int, reason: str, actor: str) -> Item:
    """Count stock in or out (a delivery, a stocktake): an F() update, audited.

    The only way stock on hand changes besides orders: a form holding counters read
    minutes ago would write them back over every reservation made since.
    """
    if delta == 0:
        raise ValidationFailed({"delta": ["Adjust by at least one unit, in or out."]})
    item = Item.objects.select_for_update().filter(sku=sku).first()
    if item is None:
        raise ValidationFailed({"sku": [f"No item {sku!r}."]})
    if item.on_hand + delta < item.reserved:
        raise ValidationFailed(
            {"delta": [f"{item.on_hand} on hand {delta:+d} would be fewer than the {item.reserved} reserved."]}
        )
    Item.objects.filter(pk=item.pk).update(on_hand=F("on_hand") + delta)
    item.refresh_from_db(fields=["on_hand", "reserved"])
    StockAdjustment.objects.create(item=item, delta=delta, on_hand_after=item.on_hand, reason=reason, actor=actor)
    return item


def _merged(lines) -> dict[str, int]:
    totals: Counter = Counter()
    for line in lines:
        totals[line.sku] += line.quantity
    return dict(sorted(totals.items()))


@transaction.atomic(savepoint=False)
def stock_reserve(*, order_id: str, lines) -> tuple[bool, list[str]]:
    """Reserve all lines or none. Returns (reserved, skus that were short)."""
    existing = Reservation.objects.filter(order_id=order_id).first()
    if existing is not None:
        if existing.status == Reservation.Status.RESERVED or existing.status == Reservation.Status.COMMITTED:
            return True, []
        raise Conflict(f"reservation for order {order_id} was already released")
    wanted = _merged(lines)
    items = {i.sku: i for i in Item.objects.select_for_update().filter(sku__in=list(wanted)).order_by("sku")}
    short = [sku for sku, qty in wanted.items() if sku not in items or items[sku].available < qty]
    if short:
        return False, short
    for sku, qty in wanted.items():
        Item.objects.filter(pk=items[sku].pk).update(reserved=F("reserved") + qty)
    Reservation.objects.create(order_id=order_id, lines=[{"sku": sku, "quantity": qty} for sku, qty in wanted.items()])
    return True, []


def _settle(order_id: str, to_status: str) -> bool:
    reservation = Reservation.objects.select_for_update().filter(order_id=order_id).first()
    if reservation is None or reservation.status != Reservation.Status.RESERVED:
        return False
    lines = sorted(reservation.lines, key=lambda line: line["sku"])
    list(Item.objects.select_for_update().filter(sku__in=[line["sku"] for line in lines]).order_by("sku"))
    for line in lines:
        update = {"reserved": F("reserved") - line["quantity"]}
        if to_status == Reservation.Status.COMMITTED:
            update["on_hand"] = F("on_hand") - line["quantity"]
        Item.objects.filter(sku=line["sku"]).update(**update)
    reservation.status = to_status
    reservation.save(update_fields=["status", "updated_at"])
    return True


@transaction.atomic(savepoint=False)
def stock_release(*, order_id: str) -> bool:
    """Return reserved stock to available. False if there was nothing to release."""
    return _settle(order_id, Reservation.Status.RELEASED)


@transaction.atomic(savepoint=False)
def stock_commit(*, order_id: str) -> bool:
    """The order is confirmed: reserved stock leaves the shelf (sold)."""
    return _settle(order_id, Reservation.Status.COMMITTED)
