"""What other contexts may know about inventory: its messages and their shapes."""

from decimal import Decimal
from typing import Annotated

import msgspec

from apps.mediator import Command, Event, Query

Quantity = Annotated[int, msgspec.Meta(gt=0)]


class StockLine(msgspec.Struct, frozen=True):
    sku: str
    quantity: Quantity


class ItemInfo(msgspec.Struct, frozen=True):
    sku: str
    name: str
    price: Decimal
    available: int


class ReserveStock(Command):
    """Reserve every line for the order, or none of them."""

    order_id: str
    lines: tuple[StockLine, ...]


class ReleaseStock(Command):
    """Give back what was reserved for the order (a no-op if nothing was)."""

    order_id: str
    reason: str = ""


class GetItems(Query):
    """Items by SKU; unknown SKUs are simply absent from the answer."""

    skus: tuple[str, ...]


class StockReserved(Event):
    order_id: str


class StockReservationFailed(Event):
    order_id: str
    reason: str
    skus: tuple[str, ...] = ()


class StockReleased(Event):
    order_id: str
