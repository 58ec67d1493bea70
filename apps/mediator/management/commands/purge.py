"""`manage.py purge`: drop the messages of a context (or of one type) not yet handled."""

import sys

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import contexts_known, message_type
from apps.mediator.orchestration import revocation
from apps.mediator.storage import revoke


class Command(BaseCommand):
    help = (
        "Revoke every message of --context (and --type) still in the outbox, queued or waiting for a "
        "retry: none of them is handled. Asks first unless --yes."
    )

    def add_arguments(self, parser):
        parser.add_argument("--context", required=True, help="The bounded context whose messages to drop.")
        parser.add_argument("--type", dest="type_", metavar="TYPE", help="Only this wire type (<context>.<Name>).")
        parser.add_argument("--reason", default="", help="Recorded on each dropped message.")
        parser.add_argument("--actor", default="manage.py purge", help="Recorded as who purged.")
        parser.add_argument("--yes", action="store_true", help="Do not ask for confirmation.")

    def handle(self, *args, context, type_, reason, actor, yes, **options):
        contexts = contexts_known(catga_settings.CONTEXTS)
        if context not in contexts:
            raise CommandError(f"--context {context!r} is not a context here (one of: {', '.join(sorted(contexts))})")
        if type_ is not None:
            cls = message_type(type_)
            if cls is None:
                raise CommandError(f"--type {type_!r} is not a message type (a wire name, like {context}.<Name>)")
            if cls.options.context != context:
                raise CommandError(f"--type {type_} belongs to {cls.options.context}, not --context {context}")
        what = f"{context}" + (f" messages of type {type_}" if type_ else " messages")
        count = revoke.purgeable(context=context, type=type_).count()
        if count == 0:
            self.stdout.write(f"nothing to purge: no {what} waiting")
            return
        if not yes:
            if not sys.stdin.isatty():
                raise CommandError(f"refusing to purge {count} {what} without confirmation: not a terminal, pass --yes")
            answer = input(f"Drop {count} {what} not yet handled? None of them will be handled. [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                raise CommandError("purge cancelled")
        purged = revocation.purge(context=context, type=type_, actor=actor, reason=reason)
        for message_id in purged.ids:
            self.stdout.write(f"{message_id}: revoked")
        self.stdout.write(f"purge {purged.id}: {purged.count} {what} dropped by {actor}")
