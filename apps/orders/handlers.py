"""Orders' message handlers: placing an order and driving it to a final status.

The flow (the generic saga engine replaces it later): PlaceOrder -> ReserveStock;
StockReserved -> ChargePayment; PaymentCaptured -> ConfirmOrder; a failed
reservation cancels; a declined payment releases the stock and cancels.
"""

from apps.inventory.contracts import (
    GetItems,
    ReleaseStock,
    ReserveStock,
    StockLine,
    StockReservationFailed,
    StockReserved,
)
from apps.mediator.errors import ValidationFailed
from apps.mediator.runtime import mediator
from apps.orders import selectors, services
from apps.orders.contracts import (
    CancelOrder,
    ConfirmOrder,
    GetOrder,
    OrderCancelled,
    OrderConfirmed,
    OrderLineOut,
    OrderPlaced,
    OrderView,
    PlaceOrder,
)
from apps.orders.models import Order
from apps.payments.contracts import ChargePayment, PaymentCaptured, PaymentDeclined, RefundPayment


def order_view(order: Order) -> OrderView:
    return OrderView(
        id=order.id,
        customer_id=order.customer_id,
        status=order.status,
        reason=order.reason,
        total=order.total,
        lines=tuple(
            OrderLineOut(sku=li.sku, quantity=li.quantity, unit_price=li.unit_price) for li in order.lines.all()
        ),
        correlation_id=order.correlation_id,
        created_at=order.created_at.isoformat(),
        updated_at=order.updated_at.isoformat(),
    )


def place_order(command: PlaceOrder, ctx) -> OrderView:
    items = {item.sku: item for item in mediator.ask(GetItems(skus=tuple({li.sku for li in command.lines})))}
    if any(line.sku not in items for line in command.lines):
        raise ValidationFailed(
            {"lines": [{} if li.sku in items else {"sku": [f"Unknown SKU {li.sku!r}."]} for li in command.lines]}
        )
    order = services.order_create(
        customer_id=command.customer_id,
        lines=command.lines,
        prices={sku: item.price for sku, item in items.items()},
        payment_token=command.payment_token,
        correlation_id=ctx.correlation_id,
    )
    mediator.publish(OrderPlaced(order_id=order.id, customer_id=order.customer_id, total=order.total))
    mediator.send(
        ReserveStock(
            order_id=order.id, lines=tuple(StockLine(sku=li.sku, quantity=li.quantity) for li in command.lines)
        )
    )
    return order_view(order)


def on_stock_reserved(event: StockReserved, ctx) -> None:
    order = selectors.order_get(event.order_id)
    if order.status != Order.Status.PENDING:
        mediator.send(ReleaseStock(order_id=order.id, reason=f"order {order.status}"))
        return
    mediator.send(ChargePayment(order_id=order.id, amount=order.total, token=order.payment_token))


def on_stock_reservation_failed(event: StockReservationFailed, ctx) -> None:
    mediator.send(CancelOrder(order_id=event.order_id, reason=event.reason))


def on_payment_captured(event: PaymentCaptured, ctx) -> None:
    mediator.send(ConfirmOrder(order_id=event.order_id))


def on_payment_declined(event: PaymentDeclined, ctx) -> None:
    mediator.send(ReleaseStock(order_id=event.order_id, reason=event.reason))
    mediator.send(CancelOrder(order_id=event.order_id, reason=event.reason))


def confirm_order(command: ConfirmOrder, ctx) -> None:
    if services.order_confirm(order_id=command.order_id) is not None:
        mediator.publish(OrderConfirmed(order_id=command.order_id))
    elif selectors.order_get(command.order_id).status == Order.Status.CANCELLED:
        # Cancelled while the payment was in flight: give the money back.
        mediator.send(RefundPayment(order_id=command.order_id, reason="order cancelled"))


def cancel_order(command: CancelOrder, ctx) -> None:
    if services.order_cancel(order_id=command.order_id, reason=command.reason) is not None:
        mediator.publish(OrderCancelled(order_id=command.order_id, reason=command.reason))


def get_order(query: GetOrder, ctx) -> OrderView:
    return order_view(selectors.order_get(query.order_id))


COMMANDS = {PlaceOrder: place_order, ConfirmOrder: confirm_order, CancelOrder: cancel_order}
QUERIES = {GetOrder: get_order}
EVENTS = {
    StockReserved: [on_stock_reserved],
    StockReservationFailed: [on_stock_reservation_failed],
    PaymentCaptured: [on_payment_captured],
    PaymentDeclined: [on_payment_declined],
}
