"""Replay: deliver a stored message again — the one service behind both
`manage.py replay` and the admin's replay action.

A replay goes back through the outbox: the row becomes pending again with a fresh
JetStream de-duplication key (`<id>.replay.<n>`), so the duplicate window cannot
swallow it, and it is published after commit (or by the relay). Handlers that had
already succeeded for the message are still skipped by the inbox; dead deliveries
are reopened so their handlers run again, with a fresh budget of attempts. Who replayed what and when is recorded
on the message and in each reopened delivery's attempt log.
"""

from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone

from apps.mediator.models import Delivery, Message
from apps.mediator.storage import history

UNDECODABLE = "(decode)"


@dataclass(frozen=True)
class Replayed:
    message_id: str
    ok: bool
    detail: str


def dead_messages(*, context: str | None = None, type: str | None = None):
    rows = Message.objects.filter(status=Message.Status.DEAD)
    if context:
        rows = rows.filter(context=context)
    if type:
        rows = rows.filter(type=type)
    return rows.order_by("id")


def replay(message_ids, *, actor: str, publish, only_dead: bool = False) -> list[Replayed]:
    """Replay each message in its own transaction. With `only_dead`, a message that is no
    longer dead when its row is locked (someone replayed it a moment ago) is skipped.
    `publish` is the transport's: each replayed message is handed to it after its commit."""
    results = []
    for message_id in message_ids:
        with transaction.atomic():
            results.append(_replay_one(message_id, actor, only_dead, publish))
    return results


def _replay_one(message_id: str, actor: str, only_dead: bool, publish) -> Replayed:
    row = Message.objects.select_for_update().filter(pk=message_id).first()
    if row is None:
        return Replayed(message_id, False, "no such message")
    if only_dead and row.status != Message.Status.DEAD:
        return Replayed(message_id, False, f"no longer a dead letter (now {row.status})")
    if row.deliveries.filter(handler=UNDECODABLE).exists():
        return Replayed(message_id, False, "undecodable on arrival: nothing valid to deliver again")
    now = timezone.now()
    replays = [*(row.headers or {}).get("replays", []), {"at": now.isoformat(), "by": actor}]
    entry = {
        "attempt": 0,
        "started_at": now.isoformat(),
        "finished_at": now.isoformat(),
        "duration_ms": 0,
        "outcome": "replayed",
        "error": f"replayed by {actor}",
    }
    reopened = 0
    for delivery in row.deliveries.select_for_update().filter(status=Delivery.Status.DEAD):
        delivery.status = Delivery.Status.RETRYING
        delivery.attempts = 0  # a fresh budget of attempts: the count is the record's (the log keeps the old ones)
        delivery.attempt_log = [*delivery.attempt_log, entry]
        delivery.save(update_fields=["status", "attempts", "attempt_log"])
        reopened += 1
    row.headers = {**(row.headers or {}), "replays": replays, "dedupe_id": f"{row.id}.replay.{len(replays)}"}
    row.status = Message.Status.PENDING
    row.available_at = None
    row.save(update_fields=["headers", "status", "available_at"])
    outgoing = history.outgoing_of(row)
    transaction.on_commit(lambda: publish([outgoing]))
    return Replayed(message_id, True, f"queued again (replay #{len(replays)}, {reopened} dead delivery(ies) reopened)")
