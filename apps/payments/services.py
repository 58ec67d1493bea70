"""Payment writes.

The writes a handler calls are atomic without a savepoint of their own: inside a handler
the dispatcher's savepoint is the one a failure rolls back to, and one per service would
cost two more round trips per saga step. Nothing catches their errors and carries on."""

from decimal import Decimal

from django.db import transaction

from apps.mediator import TransientError
from apps.payments import provider
from apps.payments.models import Payment


@transaction.atomic(savepoint=False)
def payment_charge(*, order_id: str, amount: Decimal, token: str, attempt: int) -> Payment:
    """Capture once per order; a second call returns the first result."""
    done = (
        Payment.objects.select_for_update()
        .filter(order_id=order_id, status__in=[Payment.Status.CAPTURED, Payment.Status.REFUNDED])
        .first()
    )
    if done is not None:
        return done
    try:
        # One key per order: the provider charges it once, whoever calls and however often.
        reference = provider.charge(
            token=token, amount=amount, order_id=order_id, attempt=attempt, idempotency_key=f"charge:{order_id}"
        )
    except provider.ProviderUnavailable as exc:
        raise TransientError(str(exc)) from exc
    except provider.Declined as exc:
        return Payment.objects.create(
            order_id=order_id, amount=amount, status=Payment.Status.DECLINED, reason=exc.reason
        )
    return Payment.objects.create(
        order_id=order_id, amount=amount, status=Payment.Status.CAPTURED, provider_ref=reference
    )


@transaction.atomic(savepoint=False)
def payment_refund(*, order_id: str) -> Payment | None:
    payment = Payment.objects.select_for_update().filter(order_id=order_id, status=Payment.Status.CAPTURED).first()
    if payment is None:
        return None
    provider.refund(reference=payment.provider_ref)
    payment.status = Payment.Status.REFUNDED
    payment.save(update_fields=["status", "updated_at"])
    return payment
