"""What other contexts may know about payments: its messages and their shapes."""

from decimal import Decimal

from apps.mediator import Command, Event


class ChargePayment(Command):
    order_id: str
    amount: Decimal
    token: str

    class Meta:
        max_attempts = 5


class RefundPayment(Command):
    order_id: str
    reason: str = ""


class PaymentCaptured(Event):
    order_id: str
    payment_id: int
    amount: Decimal


class PaymentDeclined(Event):
    order_id: str
    reason: str


class PaymentRefunded(Event):
    order_id: str
    payment_id: int
