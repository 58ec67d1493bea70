"""`manage.py relay_outbox`: publish outbox rows left unpublished (run_consumer also does this)."""

import time

from django.core.management.base import BaseCommand, CommandError

from apps.mediator.core import roles
from apps.mediator.core.conf import catga_settings
from apps.mediator.runtime import get_mediator
from apps.mediator.storage import outbox


class Command(BaseCommand):
    help = "Publish due outbox rows through the configured transport; once, or in a loop with --loop."

    def add_arguments(self, parser):
        parser.add_argument("--loop", action="store_true", help="Keep sweeping every RELAY_INTERVAL seconds.")
        parser.add_argument("--batch", type=int, default=None, help="Rows per transaction.")

    def handle(self, *args, loop, batch, **options):
        transport = get_mediator().transport
        types = roles.publishable_names(transport.registry)  # CATGA["ROLE"]'s, or None: any
        if batch is not None and batch < 1:
            raise CommandError("--batch must be at least 1")
        try:
            while True:
                published = outbox.drain(transport.publish_blocking, batch=batch, types=types)
                self.stdout.write(f"published {published}")
                if not loop:
                    return
                time.sleep(catga_settings.RELAY_INTERVAL)
        finally:
            transport.close()
