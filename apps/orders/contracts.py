"""What other contexts may know about orders: its messages and their shapes."""

from decimal import Decimal
from typing import Annotated

import msgspec

from apps.mediator import Command, Event, Query


class OrderLineIn(msgspec.Struct, frozen=True):
    sku: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Annotated[int, msgspec.Meta(gt=0, le=10_000)]


class OrderLineOut(msgspec.Struct, frozen=True):
    sku: str
    quantity: int
    unit_price: Decimal


class PlaceOrder(Command):
    customer_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    lines: Annotated[tuple[OrderLineIn, ...], msgspec.Meta(min_length=1, max_length=100)]
    payment_token: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    owner_id: int | None = None


class ConfirmOrder(Command):
    order_id: str


class CancelOrder(Command):
    order_id: str
    reason: str


class RequestOrderCancellation(Command):
    """The customer's request; the saga decides what must be undone."""

    order_id: str
    reason: str = "cancelled"


class GetOrder(Query):
    order_id: str


class GetOrderStanding(Query):
    """What payments checks before it moves money: the order's total and where its saga is."""

    order_id: str


class OrderStanding(msgspec.Struct, frozen=True):
    order_id: str
    status: str  # pending, confirmed, cancelled
    total: Decimal
    saga_status: str | None  # running, compensating, failed, cancelled, completed, stuck; None: no saga


class OrderPlaced(Event):
    order_id: str
    customer_id: str
    total: Decimal


class OrderConfirmed(Event):
    order_id: str


class OrderCancelled(Event):
    order_id: str
    reason: str


class SagaView(msgspec.Struct, frozen=True):
    status: str
    step: str
    reason: str
    log: tuple[dict, ...]


class OrderView(msgspec.Struct, frozen=True):
    id: str
    customer_id: str
    status: str
    reason: str
    total: Decimal
    lines: tuple[OrderLineOut, ...]
    correlation_id: str
    created_at: str
    updated_at: str
    saga: SagaView | None = None
    owner_id: int | None = None
