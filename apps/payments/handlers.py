"""Payments' message handlers and the map the composition root reads."""

from apps.mediator import PermanentError
from apps.orders.contracts import GetOrderStanding
from apps.payments import services
from apps.payments.contracts import ChargePayment, PaymentCaptured, PaymentDeclined, PaymentRefunded, RefundPayment
from apps.payments.models import Payment

# Where an order's saga is when its money may go back (orders' saga statuses).
REFUNDABLE = {"compensating", "failed", "cancelled"}


def charge_payment(command: ChargePayment, ctx) -> dict:
    # The amount is checked against the order itself: a command is only as good as its sender.
    standing = ctx.mediator.ask(GetOrderStanding(order_id=command.order_id))
    if standing is None:
        raise PermanentError(f"charge refused: no order {command.order_id}")
    if standing.total != command.amount:
        raise PermanentError(f"charge refused: {command.amount} is not order {command.order_id}'s total")
    payment = services.payment_charge(
        order_id=command.order_id, amount=command.amount, token=command.token, attempt=ctx.attempt
    )
    if payment.status == Payment.Status.DECLINED:
        ctx.mediator.publish(PaymentDeclined(order_id=command.order_id, reason="payment_declined"))
    else:
        ctx.mediator.publish(PaymentCaptured(order_id=command.order_id, payment_id=payment.pk, amount=payment.amount))
    return {"payment_id": payment.pk, "status": payment.status}


def refund_payment(command: RefundPayment, ctx) -> None:
    standing = ctx.mediator.ask(GetOrderStanding(order_id=command.order_id))
    if standing is None or not (standing.status == "cancelled" or standing.saga_status in REFUNDABLE):
        where = "absent" if standing is None else f"{standing.status}, its saga {standing.saga_status}"
        raise PermanentError(f"refund refused: order {command.order_id} is {where}")
    payment = services.payment_refund(order_id=command.order_id)
    if payment is not None:
        ctx.mediator.publish(PaymentRefunded(order_id=command.order_id, payment_id=payment.pk))


COMMANDS = {ChargePayment: charge_payment, RefundPayment: refund_payment}
