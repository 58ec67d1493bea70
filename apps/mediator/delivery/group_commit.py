"""The group commit: several deliveries of one hand-off in one transaction.

The deliveries a handler thread took in one hand-off run in one transaction, with one
statement to claim their inbox records and one to record their successes, and one
commit (one disk flush) for all. What cannot simply succeed is handed back to the
dispatcher's `handle`, one delivery at a time.
"""

import logging
import time

from django.db import DatabaseError, transaction
from django.utils import timezone

from apps.mediator.core import codec
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import UndecodableMessage, ValidationFailed
from apps.mediator.core.messages import Kind, Message
from apps.mediator.delivery.checks import forged, inbox_on, jsonable, lock_conflict
from apps.mediator.delivery.outcome import ACK, Outcome
from apps.mediator.models import Delivery
from apps.mediator.storage import history, inbox, outage

logger = logging.getLogger("catga.worker")


def handle_many(dispatcher, calls: list[tuple[tuple, dict]], wanted=lambda index: True) -> list[Outcome | None]:
    """Several deliveries, the `(args, kwargs)` of `handle`, committed together where they can be.

    A group commit (PostgreSQL): the deliveries a handler thread took in one hand-off
    run in one transaction, with one statement to claim their inbox records and one to
    record their successes, and one commit (one disk flush) for all. Each still has its
    own effects, inbox record and history, and each is acknowledged after the commit.

    What cannot simply succeed ends the group before it and is handled on its own, as
    `handle` does. A handler that raises rolls its group back: its failure is recorded
    as `run` records it, and the deliveries before it run again as a group, so a
    handler may run again after a rollback, as at-least-once redelivery may run it
    anyway. A group closes after GROUP_COMMIT seconds, so a slow handler holds back few
    acknowledgements. A call no longer `wanted` (the worker gave up waiting for it) is
    not started; its outcome is None.
    """
    outcomes: list[Outcome | None] = [None] * len(calls)
    if catga_settings.GROUP_COMMIT <= 0:
        for index, (args, kwargs) in enumerate(calls):
            if wanted(index):
                outcomes[index] = dispatcher.handle(*args, **kwargs)
        return outcomes
    settled = [False] * len(calls)
    start = 0
    while start < len(calls):
        if settled[start] or not wanted(start):
            start += 1
            continue
        end = start + 1
        while end < len(calls) and not settled[end]:
            end += 1
        try:
            start = _group(dispatcher, calls, start, end, wanted, outcomes, settled)
        except Exception:  # a bug of the group path must not fail its neighbours: one by one
            logger.exception("a group commit failed outside its transaction; handling it one by one")
            for index in range(start, len(calls)):
                if not settled[index] and wanted(index):
                    args, kwargs = calls[index]
                    outcomes[index], settled[index] = dispatcher.handle(*args, **kwargs), True
            break
    return outcomes


def _group(dispatcher, calls, start: int, end: int, wanted, outcomes: list, settled: list) -> int:
    """Settle calls from `start` (up to `end`) in one transaction; returns where the next group starts."""
    plain = []  # (index, envelope, message, specs)
    seen = set()
    for index in range(start, end):
        (envelope, body), kwargs = calls[index]
        message = _decoded(envelope, body)
        if message is None:
            break
        specs = dispatcher.registry.handlers_for(type(message), kwargs.get("context"))
        if not specs and message.kind is not Kind.EVENT:
            break
        if envelope.expired():  # recorded as expired by `handle`
            break
        if envelope.id in seen:  # a second copy in one transaction would take the same lock again
            break
        seen.add(envelope.id)
        plain.append((index, envelope, message, specs))
    if not plain:
        args, kwargs = calls[start]
        outcomes[start], settled[start] = dispatcher.handle(*args, **kwargs), True
        return start + 1
    try:
        done, failure = _in_one_transaction(dispatcher, plain, wanted)
    except DatabaseError:  # the group's own statements (a deadlock, a lost connection): one by one
        # (each on its own then says whether the database is away: a free retry, not a failure)
        logger.warning("a group commit failed; handling its deliveries one by one", exc_info=True)
        done, failure = [], None
    if failure is not None:
        index, envelope, message, specs, spec, exc, started = failure
        # A lock cycle may be the group's own doing (several handlers' locks in one
        # transaction): run on its own, it spends no attempt unless it fails there too.
        if len(specs) == 1 and not outage.unavailable(exc) and not lock_conflict(exc):  # recorded as `run` does
            outcomes[index] = dispatcher.failed(spec, message, envelope, exc, started)
        else:
            args, kwargs = calls[index]
            outcomes[index] = dispatcher.handle(*args, **kwargs)
        settled[index] = True
        return start  # the ones before it, again
    if not done:  # the first could not be claimed here: on its own
        args, kwargs = calls[start]
        outcomes[start], settled[start] = dispatcher.handle(*args, **kwargs), True
        return start + 1
    for index, outcome in done:
        outcomes[index], settled[index] = outcome, True
    return start + len(done)


def _in_one_transaction(dispatcher, plain: list, wanted) -> tuple[list[tuple[int, Outcome]], tuple | None]:
    """Claim, run and record `plain` in one transaction; (what succeeded, the failure that rolled it back)."""
    closes = time.monotonic() + catga_settings.GROUP_COMMIT
    done: list[tuple[int, Outcome]] = []
    failure = None
    with transaction.atomic():
        plain = _claimed(plain)
        succeeded = []
        for index, envelope, message, specs, claims in plain:
            if done and (time.monotonic() >= closes or not wanted(index)):
                break
            results = []
            for spec, claim in zip(specs, claims, strict=True):
                if claim is not None and claim.status in (Delivery.Status.SUCCEEDED, Delivery.Status.DEAD):
                    results.append(Outcome(ACK, result=claim.result, duplicate=True))
                    continue
                started = timezone.now()
                try:
                    result = dispatcher.invoke(spec, message, envelope)
                except Exception as exc:
                    failure = (index, envelope, message, specs, spec, exc, started)
                    break
                if claim is not None:
                    succeeded.append((claim, envelope.attempt, started, timezone.now(), jsonable(result)))
                results.append(Outcome(ACK, result=result))
            if failure is not None:
                transaction.set_rollback(True)
                break
            done.append((index, results[0] if len(results) == 1 else Outcome(ACK)))
        if failure is None and succeeded:
            inbox.succeeded_many(succeeded)
    return ([] if failure else done), failure


def _decoded(envelope: Envelope, body: bytes) -> Message | None:
    """The message, when nothing about it needs `handle`'s dead-letter path."""
    if len(body) > catga_settings.MAX_BODY_BYTES or envelope.attempt > 1:
        return None  # a redelivery goes alone: its attempt number is read from its record
    try:
        message = codec.decode(envelope.type, body)
    except (UndecodableMessage, ValidationFailed):
        return None
    return message


def _claimed(plain: list) -> list:
    """The leading run of `plain` whose inbox records are claimed and whose stored copy matches.

    Each entry gains the claims of its handlers (None each for a delivery without inbox).
    """
    wanted = [
        (envelope.id, spec.name, spec.context, timezone.now())
        for _, envelope, message, specs in plain
        if inbox_on(envelope, message)
        for spec in specs
    ]
    claims = iter(inbox.claim_many(wanted) if wanted else [])
    claimed = []
    for index, envelope, message, specs in plain:
        if not inbox_on(envelope, message):
            claimed.append((index, envelope, message, specs, [None] * len(specs)))
            continue
        mine = [next(claims) for _ in specs]
        stored = mine[0] if mine else None
        if stored is not None and (
            stored.stored_type is None  # no row: `handle` stores what arrived
            or not all(claim.locked for claim in mine)  # handled elsewhere right now
            or stored.stored_status in history.NOT_TO_HANDLE  # revoked: `handle` acknowledges it unrun
            or forged(stored, envelope, message)
        ):
            break
        claimed.append((index, envelope, message, specs, mine))
    return claimed
