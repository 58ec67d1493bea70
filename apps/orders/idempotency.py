"""`Idempotency-Key` for order creation, as payment APIs do it.

The same key with the same body returns the order the first request made; the
same key with another body is a 409. The key row is inserted before the order is
created, in the same transaction, so two concurrent requests with one key cannot
both create an order: the second waits on the unique index and then finds the first.
"""

import hashlib
import json
from collections.abc import Callable

from django.db import IntegrityError, transaction

from apps.mediator import Conflict, ValidationFailed
from apps.orders.models import IdempotencyKey

MAX_KEY_LENGTH = 255


def request_hash(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def once(*, user, key: str, data, create: Callable[[], str]) -> tuple[str, bool]:
    """Run `create` (returns an order id) once per (user, key). Returns (order id, replayed)."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ValidationFailed({"Idempotency-Key": [f"Must be 1 to {MAX_KEY_LENGTH} characters."]})
    digest = request_hash(data)
    try:
        with transaction.atomic():
            record = IdempotencyKey.objects.create(user=user, key=key, request_hash=digest)
            record.order_id = create()
            record.save(update_fields=["order"])
            return record.order_id, False
    except IntegrityError:
        existing = IdempotencyKey.objects.filter(user=user, key=key).first()
        if existing is None:
            raise
    if existing.request_hash != digest:
        raise Conflict("This Idempotency-Key was already used with a different request body.")
    return existing.order_id, True
