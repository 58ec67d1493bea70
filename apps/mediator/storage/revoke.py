"""Revoke and purge: settle messages not yet handled so that no handler ever runs them —
the one service behind `manage.py revoke`, `manage.py purge` and the admin's revoke action.

A revoked message's row gets the status `revoked` and, in its headers, who revoked it,
when and why (`headers["revoked"]`; a purge adds its own id and size). That is all:

- a scheduled or not yet published one is no longer `pending`, so the relay never takes it;
- one already in JetStream is acknowledged unrun by whichever consumer receives it: the
  dispatcher reads the row's status where it claims the inbox record
  (apps.mediator.delivery.dispatcher), FOR KEY SHARE, while a revoke locks the row FOR
  UPDATE. So a revoke either lands before a handler starts or waits for it to finish, and
  then finds the message handled and says so. It waits at most LOCK_TIMEOUT.

Only a message whose delivery reads its row can be revoked once due: with RECORD_HISTORY
off, a type without inbox (not ExactlyOnce, no external effects) is revocable only while
it is still scheduled.
"""

import dataclasses
import datetime as dt
import logging

import msgspec
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import QoS, message_type
from apps.mediator.models import Message
from apps.mediator.storage import history

logger = logging.getLogger("catga.operations")

LOCK_TIMEOUT = "3s"  # how long a revoke waits for a handler that holds the message
BATCH = 500  # rows a purge settles per transaction


@dataclasses.dataclass(frozen=True)
class Revoked:
    message_id: str
    ok: bool
    detail: str


@dataclasses.dataclass(frozen=True)
class Purged:
    id: str
    count: int
    ids: list[str]


def revoke(message_ids, *, actor: str, reason: str = "") -> list[Revoked]:
    """Revoke each message in its own transaction; a message already handled (or dead,
    revoked, expired) is left as it is, with the reason in its result."""
    results = []
    for message_id in message_ids:
        try:
            with transaction.atomic():
                results.append(_revoke_one(message_id, actor, reason))
        except OperationalError as exc:
            if getattr(exc.__cause__, "sqlstate", None) != "55P03":  # lock_not_available
                raise
            results.append(Revoked(message_id, False, "being handled right now: look again when it is done"))
    return results


def _revoke_one(message_id: str, actor: str, reason: str) -> Revoked:
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    row = Message.objects.select_for_update().filter(pk=message_id).first()
    if row is None:
        more = "" if history.recording() else " (with RECORD_HISTORY off a published message keeps none)"
        return Revoked(message_id, False, f"no such message in the history{more}")
    refusal = _refusal(row)
    if refusal:
        return Revoked(message_id, False, refusal)
    now = timezone.now()
    record = {"at": now.isoformat(), "by": actor, "reason": reason, "was": row.status}
    was = _where(row, now)
    row.headers = {**(row.headers or {}), "revoked": record}
    row.status = Message.Status.REVOKED
    row.save(update_fields=["headers", "status"])
    logger.info("revoked %s %s (%s) by %s: %s", row.type, row.pk, was, actor, reason or "no reason given")
    return Revoked(message_id, True, f"revoked ({was})")


def _refusal(row: Message) -> str:
    """Why this message cannot be revoked ("" when it can)."""
    status = row.status
    if status == Message.Status.HANDLED:
        return "already handled: nothing to revoke"
    if status == Message.Status.DEAD:
        return "a dead letter: nothing is queued (replay delivers it again)"
    if status in history.NOT_TO_HANDLE:
        done = (row.headers or {}).get("revoked") or {}
        by = f" by {done['by']} at {done['at']}" if done.get("by") else ""
        return f"already {status}{by}"
    if not checked_at_dispatch(row) and not _scheduled(row, timezone.now()):
        return "not revocable once due with RECORD_HISTORY off: its delivery reads no record to check"
    return ""


def checked_at_dispatch(row: Message) -> bool:
    """Whether the consumer that receives it reads its row (the dispatcher's inbox_on)."""
    if history.recording() or row.qos == QoS.EXACTLY_ONCE.value:
        return True
    cls = message_type(row.type)
    return cls is not None and bool(cls.options.external_effects)


def _scheduled(row: Message, now: dt.datetime) -> bool:
    return row.status == Message.Status.PENDING and row.available_at is not None and row.available_at > now


def _where(row: Message, now: dt.datetime) -> str:
    if _scheduled(row, now):
        return f"was scheduled for {row.available_at.isoformat()}"
    if row.status == Message.Status.PENDING:
        return "was in the outbox"
    if row.status == Message.Status.FAILED:
        return "was waiting for a retry"
    return "was queued"


def purgeable(*, context: str, type: str | None = None):
    """The messages of `context` (and `type`) not handled yet: in the outbox, queued, or retrying."""
    rows = Message.objects.filter(status__in=history.UNHANDLED, context=context)
    return rows.filter(type=type) if type else rows


def purge(*, context: str, type: str | None = None, actor: str, reason: str = "") -> Purged:
    """Revoke every message `purgeable` finds, BATCH per transaction.

    Each dropped row records the purge (its id, who, when, why) in `headers["revoked"]`, and
    the purge's size once it is done, so any one of them tells the whole purge. A message
    being handled right now (its row locked) is left to finish; with RECORD_HISTORY off,
    one that its consumer would not check is left too.
    """
    purge_id = new_id()
    now = timezone.now()
    record = {"at": now.isoformat(), "by": actor, "reason": reason or "purged", "purge": purge_id}
    ids: list[str] = []
    after = ""
    table = connection.ops.quote_name(Message._meta.db_table)
    while True:
        with transaction.atomic():
            batch = purgeable(context=context, type=type).filter(pk__gt=after).order_by("id")
            batch = batch.select_for_update(skip_locked=True).only("id", "type", "qos", "status", "available_at")
            rows = list(batch[:BATCH])
            if not rows:
                break
            after = rows[-1].pk
            chosen = [row.pk for row in rows if checked_at_dispatch(row) or _scheduled(row, now)]
            if chosen:
                with connection.cursor() as cursor:
                    cursor.execute(
                        f"UPDATE {table} SET status = %s, "  # noqa: S608 (the model's table)
                        "headers = COALESCE(headers, '{}'::jsonb) || jsonb_build_object('revoked', "
                        "%s::jsonb || jsonb_build_object('was', status)) WHERE id = ANY(%s)",
                        [Message.Status.REVOKED.value, msgspec.json.encode(record).decode(), chosen],
                    )
            ids.extend(chosen)
    if ids:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            with connection.cursor() as cursor:
                cursor.execute(
                    f"UPDATE {table} SET headers = jsonb_set(headers, '{{revoked,count}}', %s::jsonb) "  # noqa: S608
                    "WHERE id = ANY(%s)",
                    [str(len(ids)), chunk],
                )
    logger.info(
        "purge %s by %s dropped %d message(s) of %s%s: %s",
        purge_id,
        actor,
        len(ids),
        context,
        f" ({type})" if type else "",
        ", ".join(ids[:100]) + (" …" if len(ids) > 100 else ""),
    )
    return Purged(purge_id, len(ids), ids)
