"""`manage.py prune_messages`: keep the history table bounded (storage/retention.py says what goes).

It also runs by itself: the `catga.prune-messages` schedule (CATGA["PRUNE_SCHEDULE"], daily)
prunes with the configured retention, so no CronJob is needed.
"""

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.core.conf import catga_settings
from apps.mediator.storage import retention


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

        if dry_run:
            cutoff = retention.cutoff_for(days)
            self.stdout.write(
                f"Would delete {retention.prunable(cutoff).count()} messages created before "
                f"{cutoff:%Y-%m-%d %H:%M} UTC ({days} days); {retention.dead_kept(cutoff)} older dead letters "
                "kept until resolved."
            )
            return

        def on_batch(number: int, done: int) -> None:
            if options.get("verbosity", 1) >= 2:
                self.stdout.write(f"  batch {number}: {done} messages")

        result = retention.prune(days, batch_size=batch_size, on_batch=on_batch)
        self.stdout.write(
            f"Deleted {result.messages} messages and {result.deliveries} deliveries created before "
            f"{result.cutoff:%Y-%m-%d %H:%M} UTC ({days} days) in {result.batches} batches; "
            f"{result.dead_kept} older dead letters kept until resolved."
        )
