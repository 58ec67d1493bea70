"""`manage.py catga_inspect`: the running workers, as the admin's "Workers" page shows them.

    kubectl -n catga exec deploy/catga-web -- python manage.py catga_inspect [--json]
    ... catga_inspect --drain <host>[:<pid>] / --resume <host>[:<pid>]

One row per run_consumer process (from its heartbeat row): host (the pod), pid,
contexts, concurrency, when it started, the age of its last beat, whether it is live,
messages in flight, handled and throughput. Gone workers are listed until pruned.
`--drain` asks the named workers to stop fetching and finish what they hold (they act on it
at their next heartbeat and stay up); `--resume` undoes it.
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
        parser.add_argument("--drain", metavar="HOST[:PID]", help="Drain the workers on this host (or this pid).")
        parser.add_argument("--resume", metavar="HOST[:PID]", help="Let drained workers fetch again.")

    def handle(self, *args, as_json: bool = False, drain=None, resume=None, **options):
        for target, flag in ((drain, True), (resume, False)):
            if target is not None:
                self._drain(target, flag)
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
                    "fetching",
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
                        "drained" if w["paused"] else ("drain asked" if w["drain"] else "yes"),
                        w["in_flight"],
                        w["handled"],
                        f"{w['throughput']:.1f}",
                    ]
                    for w in rows
                ],
            ).replace("(hosts: none)", "(workers: none)")
        )

    def _drain(self, target: str, flag: bool) -> None:
        host, _, pid = target.partition(":")
        if pid and not pid.isdigit():
            raise CommandError(f"{target!r}: give HOST or HOST:PID")
        ids = [w["id"] for w in workers.listing() if w["host"] == host and (not pid or w["pid"] == int(pid))]
        if not ids:
            raise CommandError(f"no worker on {target}")
        workers.request_drain(ids, flag)
        verb = "drain" if flag else "resume"
        self.stdout.write(f"{len(ids)} worker(s) on {target} will {verb} at their next heartbeat.")
