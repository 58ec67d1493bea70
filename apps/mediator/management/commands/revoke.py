"""`manage.py revoke`: cancel messages that are scheduled or queued but not yet handled."""

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.orchestration import revocation


class Command(BaseCommand):
    help = (
        "Revoke messages by id: a scheduled one is never published, a queued one is acknowledged "
        "unrun by whichever consumer receives it. One already handled is left as it is."
    )

    def add_arguments(self, parser):
        parser.add_argument("message_ids", nargs="+", metavar="MESSAGE_ID")
        parser.add_argument("--reason", default="", help="Recorded with who revoked and when.")
        parser.add_argument("--actor", default="manage.py revoke", help="Recorded as who revoked.")

    def handle(self, *args, message_ids, reason, actor, **options):
        results = revocation.revoke([m.strip().upper() for m in message_ids], actor=actor, reason=reason)
        for result in results:
            self.stdout.write(f"{result.message_id}: {result.detail}")
        failed = [r for r in results if not r.ok]
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(results)} message(s) not revoked: "
                + "; ".join(f"{r.message_id} {r.detail}" for r in failed[:5])
            )
