"""`manage.py catga_status`: the state of the messaging in one place, from any pod.

    kubectl -n catga exec deploy/catga-web -- python manage.py catga_status [--json]

Streams (messages, bytes), each durable consumer's pending and ack-pending counts,
the dead letters, the outbox backlog (committed, not yet published), history rows
that need attention and stuck sagas.
"""

import asyncio
import json

from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from django.utils import timezone

from apps.mediator.models import Message, SagaState
from apps.mediator.runtime import get_mediator

TIMEOUT = 10.0  # seconds for the whole JetStream read


class Command(BaseCommand):
    help = (
        "Show JetStream streams and consumers (pending, ack pending), dead letters and the outbox backlog. "
        "Exits with an error when the message system is unreachable."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--json", action="store_true", dest="as_json", help="Print one JSON document instead of tables."
        )

    def handle(self, *args, as_json: bool = False, **options):
        transport = get_mediator().transport
        try:
            snapshot = asyncio.run(asyncio.wait_for(transport.backlog(), TIMEOUT))
        except NotImplementedError as exc:
            raise CommandError(f"catga_status needs a broker transport: {exc}") from exc
        except ConnectionError as exc:
            raise CommandError(f"{transport.label} is unreachable: {exc}") from exc
        except TimeoutError as exc:
            raise CommandError(f"{transport.label} did not answer within {TIMEOUT:g}s") from exc
        status = {
            **snapshot.as_dict(),
            "transport": transport.label,
            "url": getattr(transport, "url", ""),
            "outbox": _outbox(),
        }
        if as_json:
            self.stdout.write(json.dumps(status, indent=2))
        else:
            self._tables(status)

    def _tables(self, status: dict) -> None:
        out = self.stdout
        out.write(f"{status['transport']} {status['url']}\n")
        out.write(
            _table(
                ["stream", "messages", "bytes", "consumers"],
                [[s["name"], s["messages"], s["bytes"], s["consumers"]] for s in status["streams"]],
            )
        )
        out.write(
            _table(
                ["consumer", "stream", "pending", "ack pending", "redelivered", "waiting pulls"],
                [
                    [c["name"], c["stream"], c["pending"], c["ack_pending"], c["redelivered"], c["waiting"]]
                    for c in status["consumers"]
                ],
            )
        )
        outbox = status["outbox"]
        if "error" in outbox:
            out.write(f"dead letters: {status['dead_letters']} in the stream\n")
            out.write(self.style.ERROR(f"outbox: database unreachable ({outbox['error']})\n"))
            return
        out.write(
            f"dead letters: {status['dead_letters']} in the stream, {outbox['dead']} dead message(s) in the history\n"
            f"outbox backlog: {outbox['pending']} pending ({outbox['scheduled']} scheduled for later), "
            f"{outbox['failed']} failed message(s) being retried\n"
        )
        if outbox["stuck_sagas"]:
            out.write(
                self.style.ERROR(
                    f"stuck sagas: {len(outbox['stuck_sagas'])} (correlation ids: {', '.join(outbox['stuck_sagas'])})\n"
                )
            )
        if status["missing"]:
            out.write(
                self.style.WARNING(f"missing: {', '.join(status['missing'])} (no process has provisioned them)\n")
            )


def _outbox() -> dict:
    try:
        return _outbox_counts()
    except DatabaseError as exc:
        return {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}


def _outbox_counts() -> dict:
    pending = Message.objects.filter(status=Message.Status.PENDING)
    return {
        "pending": pending.count(),
        "scheduled": pending.filter(available_at__gt=timezone.now()).count(),
        "failed": Message.objects.filter(status=Message.Status.FAILED).count(),
        "dead": Message.objects.filter(status=Message.Status.DEAD).count(),
        # A stuck saga waits for an operator (docs/operations.md: replay its dead step, or compensate).
        "stuck_sagas": list(
            SagaState.objects.filter(status=SagaState.Status.STUCK)
            .order_by("id")
            .values_list("correlation_id", flat=True)[:50]
        ),
    }


def _table(headers: list[str], rows: list[list]) -> str:
    if not rows:
        return f"({headers[0]}s: none)\n"
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 or n == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n\n"
