"""The order saga: reserve stock, charge the payment, confirm — or undo and cancel."""

from decimal import Decimal

from django.conf import settings

from apps.inventory.contracts import ReleaseStock, ReserveStock, StockLine, StockReservationFailed, StockReserved
from apps.mediator import Saga, Step
from apps.orders.contracts import CancelOrder, ConfirmOrder, OrderConfirmed
from apps.payments.contracts import ChargePayment, PaymentCaptured, PaymentDeclined, RefundPayment


def step_timeout() -> float:
    """Seconds each step may take before the saga gives up on it (ORDER_STEP_TIMEOUT)."""
    return float(getattr(settings, "ORDER_STEP_TIMEOUT", 60))


def _captured_in_full(data: dict, event: PaymentCaptured) -> bool:
    return Decimal(event.amount) == Decimal(data["amount"])


class OrderSaga(Saga):
    context = "orders"
    key = "order_id"  # a reply about another order is not this saga's, whatever its correlation id
    steps = [
        Step(
            "reserve_stock",
            send=lambda d: ReserveStock(
                order_id=d["order_id"], lines=tuple(StockLine(sku=s, quantity=q) for s, q in d["lines"])
            ),
            completes_on=[StockReserved],
            fails_on=[StockReservationFailed],
            compensate=lambda d: ReleaseStock(order_id=d["order_id"], reason="order saga compensation"),
            timeout=step_timeout,
        ),
        Step(
            "charge_payment",
            send=lambda d: ChargePayment(order_id=d["order_id"], amount=Decimal(d["amount"]), token=d["token"]),
            completes_on=[PaymentCaptured],
            fails_on=[PaymentDeclined],
            compensate=lambda d: RefundPayment(order_id=d["order_id"], reason="order saga compensation"),
            timeout=step_timeout,
            on_reply=lambda d, event: {"payment_id": event.payment_id},
            accepts=_captured_in_full,
        ),
        Step(
            "confirm_order",
            send=lambda d: ConfirmOrder(order_id=d["order_id"]),
            completes_on=[OrderConfirmed],
            timeout=step_timeout,
            pivot=True,  # once confirming, the order can no longer be cancelled
        ),
    ]

    @staticmethod
    def on_failed(data: dict, reason: str):
        return CancelOrder(order_id=data["order_id"], reason=reason)
