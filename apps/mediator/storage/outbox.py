"""The outbox relay: publishes what the after-commit publish did not.

Rows are claimed with SELECT ... FOR UPDATE SKIP LOCKED (PostgreSQL), so several
relays — one in every run_consumer process — share the backlog without two of
them publishing the same row at once. A row is only taken once it is older than
RELAY_GRACE (until then the after-commit publish owns it) or, for scheduled
messages, once it is due. Whatever is published twice anyway (a crash between
publish and commit) is dropped by JetStream's Nats-Msg-Id de-duplication.

A revoked row is no longer pending, so it is never taken; a row past its `expires`
is marked expired in the transaction that claimed it, and not published.
"""

import datetime as dt
from collections.abc import Callable, Collection, Sequence

from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.ports import Outgoing
from apps.mediator.models import Message
from apps.mediator.storage import history

Publish = Callable[[Sequence[Outgoing]], list[str]]  # returns the ids JetStream acknowledged


def due_rows(now: dt.datetime, types: Collection[str] | None = None):
    grace = dt.timedelta(seconds=catga_settings.RELAY_GRACE)
    rows = Message.objects.filter(status=Message.Status.PENDING).filter(
        Q(available_at__isnull=True, created_at__lt=now - grace) | Q(available_at__lte=now)
    )
    # A relay whose role may not publish a type leaves its rows to one that may (core/roles.py).
    return rows if types is None else rows.filter(type__in=sorted(types))


def backlog() -> int:
    return Message.objects.filter(status=Message.Status.PENDING).count()


def sweep(
    publish: Publish,
    *,
    batch: int | None = None,
    now: dt.datetime | None = None,
    types: Collection[str] | None = None,
    on_expired: Callable[[list[str], str], None] | None = None,
) -> int:
    """One relay transaction: claim, publish, mark. Returns how many were published.
    `types`: the wire names this relay may publish (None: any); `on_expired(ids, "expired")`
    is told, in the same transaction, of the rows it found past their expiry."""
    now = now or timezone.now()
    with transaction.atomic():
        while True:
            claimed = due_rows(now, types).order_by("id").select_for_update(skip_locked=True)
            rows = list(claimed[: batch or catga_settings.RELAY_BATCH])
            if not rows:
                return 0
            expired = {row.id for row in rows if row.expires_at is not None and row.expires_at <= now}
            if not expired:
                break
            Message.objects.filter(pk__in=expired).update(status=Message.Status.EXPIRED)
            if on_expired is not None:
                on_expired(sorted(expired), Message.Status.EXPIRED)
            rows = [row for row in rows if row.id not in expired]
            if rows:
                break  # else the next rows: expired ones are no longer pending
        acked = publish([history.outgoing_of(row) for row in rows])
        Message.objects.filter(pk__in=[row.id for row in rows]).update(publish_attempts=F("publish_attempts") + 1)
        if acked:
            history.mark_published(acked)
    return len(acked)


def drain(publish: Publish, *, batch: int | None = None, types: Collection[str] | None = None, on_expired=None) -> int:
    """Sweep until nothing due is left (or a sweep publishes nothing)."""
    total = 0
    while True:
        published = sweep(publish, batch=batch, types=types, on_expired=on_expired)
        total += published
        if published == 0:
            return total
