"""Orders' message handlers: placing, confirming and cancelling orders.

The order saga (apps/orders/saga.py) drives the flow between contexts; these
handlers are its steps in this context and the entry points that start or stop it.
"""

from decimal import Decimal

from apps.inventory.contracts import GetItems, ReleaseStock, ReserveStock
from apps.mediator import Conflict, ValidationFailed
from apps.mediator import saga_timeline as timeline
from apps.orders import selectors, services
from apps.orders.contracts import (
    CancelOrder,
    ConfirmOrder,
    GetOrder,
    GetOrderStanding,
    OrderCancelled,
    OrderConfirmed,
    OrderLineOut,
    OrderPlaced,
    OrderStanding,
    OrderView,
    PlaceOrder,
    RequestOrderCancellation,
    SagaView,
)
from apps.orders.models import Order
from apps.orders.saga import OrderSaga
from apps.payments.contracts import ChargePayment, RefundPayment

MAX_TOTAL = Decimal("9999999999.99")  # what Order.total (numeric(12, 2)) holds


def order_view(order: Order, *, lines=None, saga: SagaView | None = None) -> OrderView:
    """The order as the API shows it; `lines` and `saga` when the caller has them (no queries)."""
    if lines is None:
        lines = order.lines.all()
    return OrderView(
        id=order.id,
        customer_id=order.customer_id,
        status=order.status,
        reason=order.reason,
        total=order.total,
        lines=tuple(OrderLineOut(sku=li.sku, quantity=li.quantity, unit_price=li.unit_price) for li in lines),
        correlation_id=order.correlation_id,
        created_at=order.created_at.isoformat(),
        updated_at=order.updated_at.isoformat(),
        saga=saga or saga_view(order),
        owner_id=order.owner_id,
    )


def saga_view(order: Order, state=None) -> SagaView | None:
    if state is None and order.correlation_id:
        state = OrderSaga.state_for(order.correlation_id)
    if state is None:
        return None
    return SagaView(
        status=state.status,
        step=OrderSaga.steps[state.current_step].name,
        reason=state.reason,
        log=tuple(timeline(state)),
    )


def place_order(command: PlaceOrder, ctx) -> OrderView:
    items = {item.sku: item for item in ctx.mediator.ask(GetItems(skus=tuple({li.sku for li in command.lines})))}
    if any(line.sku not in items for line in command.lines):
        raise ValidationFailed(
            {"lines": [{} if li.sku in items else {"sku": [f"Unknown SKU {li.sku!r}."]} for li in command.lines]}
        )
    total = sum((items[li.sku].price * li.quantity for li in command.lines), Decimal("0"))
    if total > MAX_TOTAL:
        raise ValidationFailed(
            {"lines": [f"The order's total {total} is over the most one order may cost ({MAX_TOTAL})."]}
        )
    order = services.order_create(
        customer_id=command.customer_id,
        owner_id=command.owner_id,
        lines=command.lines,
        prices={sku: item.price for sku, item in items.items()},
        payment_token=command.payment_token,
        correlation_id=ctx.correlation_id,
    )
    ctx.mediator.publish(OrderPlaced(order_id=order.id, customer_id=order.customer_id, total=order.total))
    state = OrderSaga.start(
        {
            "order_id": order.id,
            "lines": [[li.sku, li.quantity] for li in command.lines],
            "amount": str(order.total),
            "token": order.payment_token,
        },
        mediator=ctx.mediator,
    )
    lines = [OrderLineOut(sku=li.sku, quantity=li.quantity, unit_price=items[li.sku].price) for li in command.lines]
    return order_view(order, lines=lines, saga=saga_view(order, state))


def confirm_order(command: ConfirmOrder, ctx) -> None:
    if services.order_confirm(order_id=command.order_id) is not None:
        ctx.mediator.publish(OrderConfirmed(order_id=command.order_id))


def cancel_order(command: CancelOrder, ctx) -> None:
    if services.order_cancel(order_id=command.order_id, reason=command.reason) is not None:
        ctx.mediator.publish(OrderCancelled(order_id=command.order_id, reason=command.reason))


def request_cancellation(command: RequestOrderCancellation, ctx) -> OrderView:
    """The customer asks to cancel: the saga undoes what it did, then cancels the order."""
    order = selectors.order_get(command.order_id)
    if order.status != Order.Status.PENDING:
        raise Conflict(f"order {order.id} is already {order.status}")
    OrderSaga.cancel(order.correlation_id, reason=command.reason, mediator=ctx.mediator)
    return order_view(order)


def get_order(query: GetOrder, ctx) -> OrderView:
    return order_view(selectors.order_get(query.order_id))


def get_order_standing(query: GetOrderStanding, ctx) -> OrderStanding | None:
    order = Order.objects.filter(pk=query.order_id).only("status", "total", "correlation_id").first()
    if order is None:
        return None
    state = OrderSaga.state_for(order.correlation_id) if order.correlation_id else None
    return OrderStanding(
        order_id=order.id, status=order.status, total=order.total, saga_status=state.status if state else None
    )


COMMANDS = {
    PlaceOrder: place_order,
    ConfirmOrder: confirm_order,
    CancelOrder: cancel_order,
    RequestOrderCancellation: request_cancellation,
    **OrderSaga.command_handlers(),
}
QUERIES = {GetOrder: get_order, GetOrderStanding: get_order_standing}
EVENTS = OrderSaga.event_handlers()
# The saga's steps and compensations: what the orders NATS user may send to other contexts.
SENDS = [ReserveStock, ReleaseStock, ChargePayment, RefundPayment]
