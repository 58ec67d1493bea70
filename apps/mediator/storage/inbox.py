"""The inbox: each (message, handler) claimed under an advisory lock and recorded once.

A claim and its success are written in the handler's own transaction, so a redelivered
message finds its record and is acknowledged without running its effects twice.
"""

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

import msgspec
from django.db import connection

from apps.mediator.models import Delivery, Message
from apps.mediator.storage.history import log_entry


class InboxBusy(Exception):
    """Another copy of this delivery is being handled right now (it holds the inbox lock)."""


def inbox_claim(message_id: str, handler: str, context: str, started: dt.datetime) -> tuple[Delivery, str | None]:
    """In the handler's transaction: lock this (message, handler) or raise InboxBusy; return its
    record and the message's status (None: no row).

    The message row is read FOR KEY SHARE: a revoke (FOR UPDATE) waits for this transaction,
    and this read waits for a revoke's, so a message is either revoked before its handler
    starts (the status says so) or handled before the revoke looks (and the revoke refuses).
    Other handlers' claims and the status updates (FOR NO KEY UPDATE) do not conflict with it.

    A new record has the status `running`. The lock is held until
    the transaction ends, so a second copy (a timed-out stray's retry, a redelivery racing
    the original) fails fast instead of waiting. It is an advisory lock, taken with the
    read of the record in one round trip, and a new record is only written, with its
    outcome, when the handler is done (`inbox_succeeded`).
    """
    quote = connection.ops.quote_name
    table, messages = quote(Delivery._meta.db_table), quote(Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s), d.id, d.status, d.attempts, d.result, d.attempt_log, "  # noqa: S608
            f"d.first_started_at, d.context, m.status FROM (SELECT 1) AS one "
            f"LEFT JOIN LATERAL (SELECT status FROM {messages} WHERE id = %s FOR KEY SHARE) AS m ON true "
            f"LEFT JOIN {table} AS d ON d.message_id = %s AND d.handler = %s",
            [_lock_key(message_id, handler), message_id, message_id, handler],
        )
        row = cursor.fetchone()
    locked, pk, status, attempts, result, attempt_log, first_started_at, stored_context, message_status = row
    if not locked:
        raise InboxBusy(f"{handler} is handling {message_id} elsewhere")
    if pk is None:
        fresh = Delivery(message_id=message_id, handler=handler, context=context, first_started_at=started)
        return fresh, message_status
    delivery = Delivery(
        id=pk,
        message_id=message_id,
        handler=handler,
        context=stored_context,
        status=status,
        attempts=attempts,
        result=_json(result),
        attempt_log=_json(attempt_log),
        first_started_at=first_started_at,
    )
    return delivery, message_status


def inbox_succeeded(delivery: Delivery, attempt: int, started: dt.datetime, finished: dt.datetime, result) -> None:
    """In the handler's transaction: record the success and mark the message handled."""
    # The group commit's statement, for a group of one.
    claim = Claim(
        message_id=delivery.message_id,
        handler=delivery.handler,
        context=delivery.context,
        locked=True,
        stored_type=None,
        stored_payload=None,
        stored_status=None,
        status=delivery.status,
        result=delivery.result,
        first_started_at=delivery.first_started_at or started,
    )
    succeeded_many([(claim, attempt, started, finished, result)])


def _lock_key(message_id: str, handler: str) -> int:
    digest = hashlib.blake2b(f"{message_id}\x00{handler}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _json(value):
    # jsonb arrives decoded from a column read, as text through a raw join.
    return json.loads(value) if isinstance(value, str) else value


@dataclass(slots=True)
class Claim:
    """What `claim_many` found for one (message, handler): the lock, the stored message, the record."""

    message_id: str
    handler: str
    context: str
    locked: bool
    stored_type: str | None  # None: the message has no row
    stored_payload: object
    stored_status: str | None  # the message's, read FOR KEY SHARE (see inbox_claim)
    status: str | None  # of the delivery record; None: not stored yet
    result: object
    first_started_at: dt.datetime


def claim_many(items: list[tuple[str, str, str, dt.datetime]]) -> list[Claim]:
    """`ensure_received`'s read and `inbox_claim` for several (message id, handler, context, started) at once.

    For the group commit: one round trip takes every advisory lock it can
    and reads each stored message and delivery record. Nothing is written.
    """
    quote = connection.ops.quote_name
    messages, deliveries = quote(Message._meta.db_table), quote(Delivery._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(x.key), m.type, m.payload, d.status, d.result, "  # noqa: S608
            "d.first_started_at, d.context, m.status "
            "FROM unnest(%s::int[], %s::text[], %s::text[], %s::bigint[]) AS x(ord, mid, handler, key) "
            f"LEFT JOIN LATERAL (SELECT type, payload, status FROM {messages} WHERE id = x.mid FOR KEY SHARE) "
            "AS m ON true "
            f"LEFT JOIN {deliveries} AS d ON d.message_id = x.mid AND d.handler = x.handler ORDER BY x.ord",
            [
                list(range(len(items))),
                [message_id for message_id, *_ in items],
                [handler for _, handler, *_ in items],
                [_lock_key(message_id, handler) for message_id, handler, *_ in items],
            ],
        )
        rows = cursor.fetchall()
    claims = []
    for (message_id, handler, context, started), row in zip(items, rows, strict=True):
        locked, stored_type, payload, status, result, first_started_at, stored_context, stored_status = row
        claims.append(
            Claim(
                message_id=message_id,
                handler=handler,
                context=stored_context if status is not None else context,
                locked=bool(locked),
                stored_type=stored_type,
                stored_payload=_json(payload),
                stored_status=stored_status,
                status=status,
                result=_json(result),
                first_started_at=first_started_at or started,
            )
        )
    return claims


def succeeded_many(items: list[tuple[Claim, int, dt.datetime, dt.datetime, object]]) -> None:
    """`inbox_succeeded` for several (claim, attempt, started, finished, result) in one statement.

    The rows travel as one JSON document (json_to_recordset): psycopg's quoting of
    array elements cost more than everything else about the statement.
    """
    quote = connection.ops.quote_name
    deliveries, messages = quote(Delivery._meta.db_table), quote(Message._meta.db_table)
    rows = [
        {
            "message_id": claim.message_id,
            "handler": claim.handler,
            "context": claim.context,
            "attempts": max(1, attempt),
            "first_started_at": claim.first_started_at,
            "started_at": started,
            "finished_at": finished,
            "duration_ms": (finished - started).total_seconds() * 1000,
            "result": result,
            "attempt_log": [log_entry(attempt, started, finished, "succeeded")],
        }
        for claim, attempt, started, finished, result in items
    ]
    with connection.cursor() as cursor:
        cursor.execute(
            "WITH v AS (SELECT * FROM json_to_recordset(%s::json) AS v (message_id text, handler text, "  # noqa: S608
            "context text, attempts int, first_started_at timestamptz, started_at timestamptz, "
            "finished_at timestamptz, duration_ms float8, result jsonb, attempt_log jsonb)), "
            f"upsert AS (INSERT INTO {deliveries} AS d (message_id, handler, context, status, attempts, "
            "first_started_at, started_at, finished_at, duration_ms, error, traceback, result, attempt_log) "
            "SELECT message_id, handler, context, %s, attempts, first_started_at, started_at, finished_at, "
            "duration_ms, '', '', result, attempt_log FROM v "
            "ON CONFLICT (message_id, handler) DO UPDATE SET status = EXCLUDED.status, "
            "attempts = GREATEST(d.attempts + 1, EXCLUDED.attempts), started_at = EXCLUDED.started_at, "
            "finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms, error = '', "
            "result = EXCLUDED.result, attempt_log = d.attempt_log || EXCLUDED.attempt_log), "
            # In id order, as mark_published locks them (different orders would deadlock); NO KEY
            # UPDATE, as the UPDATE itself, so it does not wait on other handlers' claims (KEY SHARE).
            f"locked AS (SELECT id FROM {messages} WHERE id IN (SELECT message_id FROM v) ORDER BY id "
            "FOR NO KEY UPDATE) "
            f"UPDATE {messages} SET status = %s WHERE id IN (SELECT id FROM locked)",
            [
                msgspec.json.encode(rows).decode(),
                Delivery.Status.SUCCEEDED.value,
                Message.Status.HANDLED.value,
            ],
        )
