"""The workers' heartbeat rows (models.WorkerHeartbeat): written by each run_consumer, read by ops.

Sync ORM functions; the worker runs them in a thread, never on its event loop.
"""

import datetime as dt

from django.db.models import DurationField, ExpressionWrapper, F, Value
from django.db.models.functions import Now
from django.utils import timezone

from apps.mediator.models import WorkerHeartbeat

HANDLING_MAX = 20  # entries of `handling` kept per row


def beat(worker_id: str, fields: dict) -> bool:
    """Upsert this worker's row, and delete the rows of workers gone for 10 of their intervals.
    Returns whether an operator asked it to drain."""
    fields = {**fields, "handling": list(fields.get("handling", ()))[:HANDLING_MAX]}
    row, _ = WorkerHeartbeat.objects.update_or_create(id=worker_id, defaults={**fields, "last_beat_at": timezone.now()})
    prune()
    return row.drain


def request_drain(worker_ids, drain: bool = True) -> int:
    """Ask these workers to stop fetching (or to fetch again); they act on it at their next beat."""
    return WorkerHeartbeat.objects.filter(pk__in=list(worker_ids)).update(drain=drain)


def prune() -> int:
    gone_for = ExpressionWrapper(
        F("interval") * Value(dt.timedelta(seconds=WorkerHeartbeat.PRUNE_INTERVALS)), output_field=DurationField()
    )
    deleted, _ = WorkerHeartbeat.objects.filter(last_beat_at__lt=Now() - gone_for).delete()
    return deleted


def forget(worker_id: str) -> None:
    """A clean shutdown: the worker's row goes with it."""
    WorkerHeartbeat.objects.filter(id=worker_id).delete()


def listing() -> list[dict]:
    """Every known worker, live or gone, as plain data (catga_inspect --json)."""
    now = timezone.now()
    rows = []
    for w in WorkerHeartbeat.objects.all():
        rows.append(
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "contexts": w.contexts,
                "concurrency": w.concurrency,
                "started_at": w.started_at.isoformat(),
                "last_beat_at": w.last_beat_at.isoformat(),
                "last_beat_age": round((now - w.last_beat_at).total_seconds(), 1),
                "live": w.live,
                "in_flight": w.in_flight,
                "handled": w.handled,
                "throughput": round(w.throughput, 2),
                "handling": w.handling,
                "queues": w.queues,
                "drain": w.drain,
                "paused": w.paused,
            }
        )
    return rows


def summary() -> dict:
    """The dashboard's card: live, paused and gone workers, what the live ones hold and handle."""
    rows = list(WorkerHeartbeat.objects.all())
    live = [w for w in rows if w.live]
    return {
        "live": len(live),
        "paused": sum(1 for w in live if w.paused),
        "gone": len(rows) - len(live),
        "in_flight": sum(w.in_flight for w in live),
        "throughput": sum(w.throughput for w in live),
    }
