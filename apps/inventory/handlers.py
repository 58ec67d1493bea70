"""Inventory's message handlers and the map the composition root reads."""

from apps.inventory import selectors, services
from apps.inventory.contracts import (
    GetItems,
    ItemInfo,
    ReleaseStock,
    ReserveStock,
    StockReleased,
    StockReservationFailed,
    StockReserved,
)
from apps.orders.contracts import OrderConfirmed


def reserve_stock(command: ReserveStock, ctx) -> None:
    reserved, short = services.stock_reserve(order_id=command.order_id, lines=command.lines)
    if reserved:
        ctx.mediator.publish(StockReserved(order_id=command.order_id))
    else:
        ctx.mediator.publish(
            StockReservationFailed(order_id=command.order_id, reason="out_of_stock", skus=tuple(short))
        )


def release_stock(command: ReleaseStock, ctx) -> None:
    if services.stock_release(order_id=command.order_id):
        ctx.mediator.publish(StockReleased(order_id=command.order_id))


def commit_stock(event: OrderConfirmed, ctx) -> None:
    services.stock_commit(order_id=event.order_id)


def get_items(query: GetItems, ctx) -> list[ItemInfo]:
    return [
        ItemInfo(sku=i.sku, name=i.name, price=i.price, available=i.available)
        for i in selectors.items_by_sku(query.skus)
    ]


COMMANDS = {ReserveStock: reserve_stock, ReleaseStock: release_stock}
QUERIES = {GetItems: get_items}
EVENTS = {OrderConfirmed: [commit_stock]}
