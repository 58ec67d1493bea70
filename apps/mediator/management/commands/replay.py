"""`manage.py replay`: deliver dead (or any) messages again."""

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.runtime import get_mediator
from apps.mediator.storage import replay


class Command(BaseCommand):
    help = "Replay messages by id, or every dead letter matching --context/--type with --dead."

    def add_arguments(self, parser):
        parser.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
        parser.add_argument("--dead", action="store_true", help="Replay dead letters (filtered by the options below).")
        parser.add_argument("--context", help="Only dead letters of this context.")
        parser.add_argument("--type", dest="type_", metavar="TYPE", help="Only dead letters of this wire type.")
        parser.add_argument("--limit", type=int, default=1000, help="Most dead letters to replay at once.")
        parser.add_argument("--dry-run", action="store_true", help="List what would be replayed.")
        parser.add_argument("--actor", default="manage.py replay", help="Recorded as who replayed.")

    def handle(self, *args, message_ids, dead, context, type_, limit, dry_run, actor, **options):
        if bool(message_ids) == bool(dead):
            raise CommandError("give message ids or --dead (not both)")
        if (context or type_) and not dead:
            raise CommandError("--context and --type filter --dead")
        if limit < 1:
            raise CommandError("--limit must be at least 1")
        if dead:
            message_ids = list(replay.dead_messages(context=context, type=type_).values_list("id", flat=True)[:limit])
            if not message_ids:
                self.stdout.write("no dead letters match")
                return
        if dry_run:
            for message_id in message_ids:
                self.stdout.write(f"would replay {message_id}")
            return
        results = replay.replay(message_ids, actor=actor, publish=get_mediator().transport.publish)
        for result in results:
            self.stdout.write(f"{result.message_id}: {result.detail}")
        failed = [r for r in results if not r.ok]
        if failed:
            raise CommandError(f"{len(failed)} of {len(results)} message(s) could not be replayed")
