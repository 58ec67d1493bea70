"""Reads and writes of the history tables, kept out of the dispatcher's logic."""

import datetime as dt
import functools

import msgspec
from django.db import connection
from django.utils import timezone

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import Kind, QoS, message_type
from apps.mediator.core.ports import Outgoing
from apps.mediator.models import Delivery, Message


def _ts(seconds: float | None) -> dt.datetime | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def _context_of(envelope: Envelope) -> str:
    cls = message_type(envelope.type)
    if cls is not None:
        return cls.options.context
    return envelope.type.split(".", 1)[0] if "." in envelope.type else ""


def _fit(value: str, field: str) -> str:
    return value[: Message._meta.get_field(field).max_length]


def message_row(envelope: Envelope, payload, *, status: str) -> Message:
    extra = {}
    if envelope.traceparent:
        extra["traceparent"] = envelope.traceparent
    if envelope.workflow:
        extra["workflow"] = envelope.workflow
    return Message(
        id=envelope.id,
        # A dead letter's stand-in envelope carries whatever type header came in: clip it to fit.
        type=_fit(printable(envelope.type), "type"),
        kind=envelope.kind.value,
        context=_fit(_context_of(envelope), "context"),
        correlation_id=envelope.correlation_id,
        causation_id=envelope.causation_id or "",
        qos=envelope.qos.value,
        status=status,
        payload=payload,
        headers=extra,
        created_at=_ts(envelope.created_at),
        available_at=_ts(envelope.not_before),
        expires_at=_ts(envelope.expires),
    )


def store_outgoing(envelope: Envelope, payload, *, status: str = Message.Status.PENDING) -> None:
    """The outbox write: runs in the sender's transaction.

    The hot path of every send, so the INSERT is built once rather than compiled by the
    ORM each time (Model.save costs twice the database's own time here;
    no signal listens on Message). The values still go through each field's own preparation.
    """
    buffered = getattr(connection, "catga_outbox", None)
    if buffered is not None and connection.in_atomic_block:
        buffered.append(_outbox_record(envelope, payload, status))  # written before the next statement
        return
    row = message_row(envelope, payload, status=status)
    sql, fields = _outbox_insert()
    with connection.cursor() as cursor:
        cursor.execute(sql, [f.get_db_prep_save(getattr(row, f.attname), connection) for f in fields])


def _outbox_record(envelope: Envelope, payload, status: str) -> dict:
    """`message_row`'s columns as JSON-ready values, for `insert_outgoing`."""
    headers = {}
    if envelope.traceparent:
        headers["traceparent"] = envelope.traceparent
    if envelope.workflow:
        headers["workflow"] = envelope.workflow
    return {
        "id": envelope.id,
        "type": _fit(printable(envelope.type), "type"),
        "kind": envelope.kind.value,
        "context": _fit(_context_of(envelope), "context"),
        "correlation_id": envelope.correlation_id,
        "causation_id": envelope.causation_id or "",
        "qos": envelope.qos.value,
        "status": status,
        "payload": payload,
        "headers": headers,
        "created_at": _ts(envelope.created_at),
        "available_at": _ts(envelope.not_before),
        "expires_at": _ts(envelope.expires),
    }


def insert_outgoing(records: list[dict], using) -> None:
    """Write buffered outbox rows in one statement (see apps.mediator.storage.backends.postgresql)."""
    with using.cursor() as cursor:
        cursor.execute(_records_insert(using), [msgspec.json.encode(records).decode()])


def _records_insert(using) -> str:
    """The INSERT of message rows given as a JSON array of `_outbox_record`s (one parameter)."""
    return (
        f"INSERT INTO {using.ops.quote_name(Message._meta.db_table)} (id, type, kind, context, correlation_id, "  # noqa: S608
        "causation_id, qos, status, payload, headers, created_at, available_at, expires_at, published_at, "
        "publish_attempts, last_error) SELECT id, type, kind, context, correlation_id, causation_id, qos, "
        "status, payload, headers, created_at, available_at, expires_at, NULL, 0, '' "
        "FROM json_to_recordset(%s::json) AS r (id text, type text, kind text, context text, "
        "correlation_id text, causation_id text, qos text, status text, payload jsonb, headers jsonb, "
        "created_at timestamptz, available_at timestamptz, expires_at timestamptz)"
    )


def store_executed(
    envelope: Envelope, payload, *, handler: str, context: str, started: dt.datetime, finished: dt.datetime, result
) -> None:
    """`Mediator.execute`'s record, in the caller's transaction: the message, handled, and its
    succeeded delivery, in one statement.

    The message was never published and its id is new, so no other copy can be handled
    anywhere: there is no inbox record to claim first, and no status to update after.
    """
    deliveries = connection.ops.quote_name(Delivery._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH m AS ({_records_insert(connection)} RETURNING id) "  # noqa: S608
            f"INSERT INTO {deliveries} (message_id, handler, context, status, attempts, first_started_at, "
            "started_at, finished_at, duration_ms, error, traceback, result, attempt_log) "
            "SELECT id, %s, %s, %s, 1, %s, %s, %s, %s, '', '', %s::jsonb, %s::jsonb FROM m",
            [
                msgspec.json.encode([_outbox_record(envelope, payload, Message.Status.HANDLED)]).decode(),
                handler,
                context,
                Delivery.Status.SUCCEEDED.value,
                started,
                started,
                finished,
                (finished - started).total_seconds() * 1000,
                None if result is None else msgspec.json.encode(result).decode(),
                msgspec.json.encode([log_entry(1, started, finished, "succeeded")]).decode(),
            ],
        )


@functools.cache
def _outbox_insert() -> tuple[str, list]:
    fields = list(Message._meta.concrete_fields)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(f.column) for f in fields)
    values = ", ".join(["%s"] * len(fields))
    sql = f"INSERT INTO {quote(Message._meta.db_table)} ({columns}) VALUES ({values})"  # noqa: S608 (names from the model)
    return sql, fields


def recording() -> bool:
    return catga_settings.RECORD_HISTORY


def mark_published(ids: list[str]) -> None:
    """JetStream has these: take them out of the outbox (one statement for the batch).

    With RECORD_HISTORY off an outbox row has done its job once published and is
    deleted, except an ExactlyOnce message's: its row anchors the inbox record.
    """
    if not recording() and _delete_published(ids) == len(ids):
        return
    # Rows locked in id order, as the consumers' group commit locks them: two statements
    # updating several of the same rows in different orders would deadlock.
    table = connection.ops.quote_name(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET status = %s, published_at = %s WHERE id IN (SELECT id FROM {table} "  # noqa: S608
            "WHERE id = ANY(%s) AND status = %s ORDER BY id FOR NO KEY UPDATE)",
            [Message.Status.PUBLISHED.value, timezone.now(), list(ids), Message.Status.PENDING.value],
        )


def _delete_published(ids: list[str]) -> int:
    """Delete the published outbox rows that are only outbox (history off); returns how many.

    One statement: QuerySet.delete() would first read the rows to cascade to deliveries,
    which these never have (the guard keeps a row a failure was recorded against).
    """
    quote = connection.ops.quote_name
    messages, deliveries = quote(Message._meta.db_table), quote(Delivery._meta.db_table)
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {messages} WHERE id IN ({marks}) AND status = %s AND qos <> %s "  # noqa: S608
            f"AND NOT EXISTS (SELECT 1 FROM {deliveries} d WHERE d.message_id = {messages}.id)",
            [*ids, Message.Status.PENDING.value, QoS.EXACTLY_ONCE.value],
        )
        return cursor.rowcount


def ensure_received(envelope: Envelope, payload, *, status: str = Message.Status.PUBLISHED) -> tuple[Message, bool]:
    """A message that arrived without passing through our outbox still gets a row: (row, created).

    Most did pass through it: their row is read first (only the columns the checks of a
    received copy use; the others load on access) and nothing is built for a create.
    """
    for stored in Message.objects.raw(_received_sql(), [envelope.id]):
        return stored, False
    return Message.objects.get_or_create(
        id=envelope.id,
        defaults={
            f.attname: getattr(message_row(envelope, payload, status=status), f.attname)
            for f in Message._meta.concrete_fields
        },
    )


@functools.cache
def _received_sql() -> str:
    # Raw: the ORM's compiling of this one-row read cost more than the database's answer.
    quote = connection.ops.quote_name
    columns = ", ".join(quote(Message._meta.get_field(name).column) for name in ("id", "type", "status", "payload"))
    return f"SELECT {columns} FROM {quote(Message._meta.db_table)} WHERE {quote('id')} = %s"  # noqa: S608


# Settled without being handled (an operator's revoke or purge, an expiry): no later
# write of a delivery's outcome turns such a message back into one to be handled.
NOT_TO_HANDLE = (Message.Status.REVOKED, Message.Status.EXPIRED)
# What may still be handled: what revoke, purge and expiry may settle.
UNHANDLED = (Message.Status.PENDING, Message.Status.PUBLISHED, Message.Status.FAILED)


def set_message_status(message_id: str, status: str) -> None:
    Message.objects.filter(pk=message_id).exclude(status__in=NOT_TO_HANDLE).update(status=status)


def record_expired(envelope: Envelope, payload) -> None:
    """A delivery that arrived after its `expires`: its message is recorded expired, unless it
    was handled or settled already (a late redelivery of a handled message stays handled)."""
    _, created = ensure_received(envelope, payload, status=Message.Status.EXPIRED)
    if not created:
        Message.objects.filter(pk=envelope.id, status__in=UNHANDLED).update(status=Message.Status.EXPIRED)


def printable(text: str) -> str:
    """PostgreSQL text and JSON cannot hold NUL; hostile input must still be recorded."""
    return text.replace("\x00", "\ufffd")


def log_entry(attempt: int, started: dt.datetime, finished: dt.datetime, outcome: str, error: str = "") -> dict:
    return {
        "attempt": attempt,
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_ms": round((finished - started).total_seconds() * 1000, 3),
        "outcome": outcome,
        "error": error,
    }


def record_delivery_failure(
    envelope: Envelope,
    handler: str,
    context: str,
    *,
    status: str,
    started: dt.datetime,
    error: str,
    tb: str,
    only_if_unfinished: bool = False,
    outcome: str | None = None,
) -> Delivery:
    """One failed attempt on the delivery's record: the count that MAX_ATTEMPTS is checked against."""
    finished = timezone.now()
    delivery, _ = Delivery.objects.select_for_update().get_or_create(
        message_id=envelope.id, handler=handler, defaults={"context": context, "first_started_at": started}
    )
    if only_if_unfinished and delivery.status in (Delivery.Status.SUCCEEDED, Delivery.Status.DEAD):
        return delivery  # it ended meanwhile (a timed-out run that succeeded after all)
    delivery.status = status
    delivery.attempts += 1
    delivery.started_at = started
    delivery.finished_at = finished
    delivery.duration_ms = (finished - started).total_seconds() * 1000
    error, tb = printable(error), printable(tb)
    delivery.error = error
    delivery.traceback = tb
    entry = log_entry(envelope.attempt, started, finished, outcome or status, error)
    delivery.attempt_log = [*delivery.attempt_log, entry]
    delivery.save()
    set_message_status(envelope.id, Message.Status.DEAD if status == Delivery.Status.DEAD else Message.Status.FAILED)
    return delivery


def envelope_of(row: Message) -> Envelope:
    """Rebuild the envelope of a stored message (the outbox relay, replays)."""
    return Envelope(
        id=row.id,
        type=row.type,
        kind=Kind(row.kind),
        correlation_id=row.correlation_id,
        causation_id=row.causation_id or None,
        qos=QoS(row.qos),
        created_at=row.created_at.timestamp(),
        not_before=row.available_at.timestamp() if row.available_at else None,
        expires=row.expires_at.timestamp() if row.expires_at else None,
        traceparent=(row.headers or {}).get("traceparent"),
        workflow=(row.headers or {}).get("workflow"),
    )


def outgoing_of(row: Message) -> Outgoing:
    """What the relay publishes for a stored row (a replay carries its own dedupe key)."""
    return Outgoing(envelope_of(row), msgspec.json.encode(row.payload), dedupe_id=(row.headers or {}).get("dedupe_id"))
