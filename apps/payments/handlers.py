"""Payments' message handlers and the map the composition root reads."""

from apps.payments import services
from apps.payments.contracts import ChargePayment, PaymentCaptured, PaymentDeclined, PaymentRefunded, RefundPayment
from apps.payments.models import Payment


def charge_payment(command: ChargePayment, ctx) -> dict:
    payment = services.payment_charge(
        order_id=command.order_id, amount=command.amount, token=command.token, attempt=ctx.attempt
    )
    if payment.status == Payment.Status.DECLINED:
        ctx.mediator.publish(PaymentDeclined(order_id=command.order_id, reason="payment_declined"))
    else:
        ctx.mediator.publish(PaymentCaptured(order_id=command.order_id, payment_id=payment.pk, amount=payment.amount))
    return {"payment_id": payment.pk, "status": payment.status}


def refund_payment(command: RefundPayment, ctx) -> None:
    payment = services.payment_refund(order_id=command.order_id)
    if payment is not None:
        ctx.mediator.publish(PaymentRefunded(order_id=command.order_id, payment_id=payment.pk))


COMMANDS = {ChargePayment: charge_payment, RefundPayment: refund_payment}
