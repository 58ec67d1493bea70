"""What other contexts may know about payments: its messages and their shapes."""

from decimal import Decimal

from apps.mediator import Command, Event, ValidationFailed


def _check_amount(amount: Decimal) -> None:
    """Money is positive, finite and in cents: anything else is a forgery or a bug, never charged."""
    if not amount.is_finite() or amount <= 0 or amount.as_tuple().exponent < -2:
        raise ValidationFailed({"amount": [f"{amount} is not a positive amount with at most two decimals."]})


class ChargePayment(Command):
    order_id: str
    amount: Decimal
    token: str

    class Meta:
        max_attempts = 5
        external_effects = True  # the provider: one call per order, history on or off

    def validate(self) -> None:
        _check_amount(self.amount)


class RefundPayment(Command):
    order_id: str
    reason: str = ""

    class Meta:
        external_effects = True


class PaymentCaptured(Event):
    order_id: str
    payment_id: int
    amount: Decimal

    def validate(self) -> None:
        _check_amount(self.amount)


class PaymentDeclined(Event):
    order_id: str
    reason: str


class PaymentRefunded(Event):
    order_id: str
    payment_id: int
