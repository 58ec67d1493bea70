"""Keeping the history bounded: what `manage.py prune_messages` and its daily schedule delete.

Finished messages (handled, revoked, expired, or published with nobody to handle them)
older than the retention go, with their deliveries, one batch per transaction, so a big
prune never holds a long lock or builds a giant transaction. A conversation that still
has a pending, retrying or dead message is kept whole: a dead letter waits for someone to
resolve it, and its story (what caused it) stays readable.
"""

import datetime as dt
import logging
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from apps.mediator.core.conf import catga_settings
from apps.mediator.models import Delivery, Message
from apps.mediator.storage import rate_limits

logger = logging.getLogger("catga.retention")

FINISHED = [Message.Status.HANDLED, Message.Status.PUBLISHED, Message.Status.REVOKED, Message.Status.EXPIRED]
UNRESOLVED = [Message.Status.PENDING, Message.Status.FAILED, Message.Status.DEAD]


@dataclass
class Pruned:
    cutoff: dt.datetime
    messages: int = 0
    deliveries: int = 0
    batches: int = 0
    dead_kept: int = 0


def prunable(cutoff: dt.datetime):
    unresolved_conversations = Message.objects.filter(status__in=UNRESOLVED).values("correlation_id")
    return Message.objects.filter(created_at__lt=cutoff, status__in=FINISHED).exclude(
        correlation_id__in=unresolved_conversations
    )


def cutoff_for(days: int) -> dt.datetime:
    return timezone.now() - dt.timedelta(days=days)


def dead_kept(cutoff: dt.datetime) -> int:
    return Message.objects.filter(status=Message.Status.DEAD, created_at__lt=cutoff).count()


def delete_batch(ids: list[str]) -> tuple[int, int]:
    """Delete these messages and their deliveries in one transaction; (messages, deliveries) deleted."""
    with transaction.atomic():
        # The cascade deletes the deliveries in one statement; only("id") keeps Django's
        # collector from loading the payloads it is about to throw away.
        _, per_model = Message.objects.filter(pk__in=ids).only("id").delete()
    return per_model.get(Message._meta.label, 0), per_model.get(Delivery._meta.label, 0)


def prune(days: int, *, batch_size: int = 1000, on_batch=None) -> Pruned:
    rate_limits.forget_stale()  # slots reserved by messages that were handled elsewhere
    result = Pruned(cutoff_for(days))
    result.dead_kept = dead_kept(result.cutoff)
    candidates = prunable(result.cutoff)
    while ids := list(candidates.order_by("created_at").values_list("pk", flat=True)[:batch_size]):
        done, done_deliveries = delete_batch(ids)
        if not done:  # someone else deleted them first; what is left is theirs to finish
            break
        result.messages += done
        result.deliveries += done_deliveries
        result.batches += 1
        if on_batch is not None:
            on_batch(result.batches, done)
    return result


def prune_scheduled() -> None:
    """The daily schedule's call (CATGA["PRUNE_SCHEDULE"]): prune with the configured retention."""
    days = catga_settings.HISTORY_RETENTION_DAYS
    if days is None:
        return
    result = prune(days)
    logger.info(
        "pruned %d messages and %d deliveries older than %d days; %d older dead letters kept",
        result.messages,
        result.deliveries,
        days,
        result.dead_kept,
    )
