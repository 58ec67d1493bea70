"""`manage.py prune_messages`: keep the history table bounded.

Deletes finished messages (handled, revoked, expired, or published with nobody to handle them)
older than the retention, with their deliveries, one batch per transaction, so a
big prune never holds a long lock or builds a giant transaction. A conversation
that still has a pending, retrying or dead message is kept whole: a dead letter
waits for someone to resolve it, and its story (what caused it) stays readable.
"""

import datetime as dt

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from apps.mediator.core.conf import catga_settings
from apps.mediator.models import Delivery, Message

FINISHED = [Message.Status.HANDLED, Message.Status.PUBLISHED, Message.Status.REVOKED, Message.Status.EXPIRED]
UNRESOLVED = [Message.Status.PENDING, Message.Status.FAILED, Message.Status.DEAD]


def prunable(cutoff: dt.datetime):
    unresolved_conversations = Message.objects.filter(status__in=UNRESOLVED).values("correlation_id")
    return Message.objects.filter(created_at__lt=cutoff, status__in=FINISHED).exclude(
        correlation_id__in=unresolved_conversations
    )


def delete_batch(ids: list[str]) -> tuple[int, int]:
    """Delete these messages and their deliveries in one transaction; (messages, deliveries) deleted."""
    with transaction.atomic():
        # The cascade deletes the deliveries in one statement; only("id") keeps Django's
        # collector from loading the payloads it is about to throw away.
        _, per_model = Message.objects.filter(pk__in=ids).only("id").delete()
    return per_model.get(Message._meta.label, 0), per_model.get(Delivery._meta.label, 0)


class Command(BaseCommand):
    help = (
        "Delete handled and published messages older than CATGA['HISTORY_RETENTION_DAYS'] (or --days), "
        "with their deliveries, in batches. Conversations with a pending, retrying or dead message are kept."
    )

    def add_arguments(self, parser):
        parser.add_argument("--days", type=int, help="Keep this many days (default: CATGA['HISTORY_RETENTION_DAYS']).")
        parser.add_argument("--batch-size", type=int, default=1000, help="Messages per transaction (default 1000).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be deleted; delete nothing.")

    def handle(self, *args, days=None, batch_size=1000, dry_run=False, **options):
        if days is None:
            days = catga_settings.HISTORY_RETENTION_DAYS
        if days is None:
            raise CommandError("Retention is off (CATGA['HISTORY_RETENTION_DAYS'] is None); pass --days N to prune.")
        if days < 0:
            raise CommandError(f"--days must be 0 or more, not {days}.")
        if batch_size < 1:
            raise CommandError(f"--batch-size must be 1 or more, not {batch_size}.")
        cutoff = timezone.now() - dt.timedelta(days=days)
        candidates = prunable(cutoff)
        dead_kept = Message.objects.filter(status=Message.Status.DEAD, created_at__lt=cutoff).count()

        if dry_run:
            self.stdout.write(
                f"Would delete {candidates.count()} messages created before {cutoff:%Y-%m-%d %H:%M} UTC "
                f"({days} days); {dead_kept} older dead letters kept until resolved."
            )
            return

        messages = deliveries = batches = 0
        while ids := list(candidates.order_by("created_at").values_list("pk", flat=True)[:batch_size]):
            done, done_deliveries = delete_batch(ids)
            if not done:  # someone else deleted them first; what is left is theirs to finish
                break
            messages += done
            deliveries += done_deliveries
            batches += 1
            if options.get("verbosity", 1) >= 2:
                self.stdout.write(f"  batch {batches}: {done} messages")
        self.stdout.write(
            f"Deleted {messages} messages and {deliveries} deliveries created before "
            f"{cutoff:%Y-%m-%d %H:%M} UTC ({days} days) in {batches} batches; "
            f"{dead_kept} older dead letters kept until resolved."
        )
