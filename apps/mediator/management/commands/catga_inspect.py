"""`manage.py catga_inspect`: the running workers, as the admin's "Workers" page shows them.

    kubectl -n catga exec deploy/catga-web -- python manage.py catga_inspect [--json]

One row per run_consumer process (from its heartbeat row): host (the pod), pid,
contexts, concurrency, when it started, the age of its last beat, whether it is live,
messages in flight, handled and throughput. Gone workers are listed until pruned.
"""

import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from apps.mediator.management.commands.catga_status import _table
from apps.mediator.storage import workers


class Command(BaseCommand):
    help = "List the run_consumer workers from their heartbeats: live or gone, in flight, handled, throughput."

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print one JSON document instead of a table."
        )

    def handle(self, *args, as_json: bool = False, **options):
        try:
            rows = workers.listing()
        except DatabaseError as exc:
            raise CommandError(f"the database is unreachable: {exc}") from exc
        if as_json:
            self.stdout.write(json.dumps({"workers": rows}, indent=2))
            return
        self.stdout.write(
            _table(
                [
                    "host",
                    "pid",
                    "contexts",
                    "concurrency",
                    "started",
                    "last beat",
                    "live",
                    "in flight",
                    "handled",
                    "/s",
                ],
                [
                    [
                        w["host"],
                        w["pid"],
                        ",".join(w["contexts"]),
                        w["concurrency"],
                        w["started_at"][:19],
                        f"{w['last_beat_age']:.1f}s ago",
                        "yes" if w["live"] else "GONE",
                        w["in_flight"],
                        w["handled"],
                        f"{w['throughput']:.1f}",
                    ]
                    for w in rows
                ],
            ).replace("(hosts: none)", "(workers: none)")
        )
