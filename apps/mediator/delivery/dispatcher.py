"""Run the handlers of one received message and say how to settle it.

Every transport hands what it receives to `Dispatcher.handle`, which returns an
Outcome (ack, retry after a delay, or dead with a reason). The transport only
turns that outcome into its own acknowledgement; the decision is made here, once.
"""

import logging
import time
import traceback
from typing import Any, Protocol

import msgspec
from django.db import DatabaseError, OperationalError, transaction
from django.utils import timezone

from apps.mediator.core import codec
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.context import current_envelope
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import AttemptsExhausted, PermanentError, UndecodableMessage, ValidationFailed
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Kind, Message, QoS, message_type
from apps.mediator.core.pipeline import HandlerContext, Pipeline
from apps.mediator.core.registry import HandlerSpec, Registry
from apps.mediator.delivery.outcome import ACK, DEAD, RETRY, Outcome, backoff
from apps.mediator.models import Delivery
from apps.mediator.models import Message as MessageRow
from apps.mediator.storage import history, inbox

logger = logging.getLogger("catga.worker")


class WorkflowHooks(Protocol):
    """The chain/group bookkeeping (orchestration), called in the member handler's transaction."""

    def member_succeeded(self, envelope: Envelope, result: Any, mediator) -> None: ...

    def member_failed(self, envelope: Envelope, error: str) -> None: ...


class Dispatcher:
    def __init__(self, registry: Registry, pipeline: Pipeline, *, workflows: WorkflowHooks | None = None):
        self.registry = registry
        self.pipeline = pipeline
        self.workflows = workflows
        self.mediator = None  # the Mediator this dispatcher serves: handlers get it as ctx.mediator

    def handle(self, envelope: Envelope, body: bytes, *, context: str | None = None) -> Outcome:
        if len(body) > catga_settings.MAX_BODY_BYTES:
            return self.dead_on_arrival(
                envelope,
                body[:256],
                f"body of {len(body)} bytes exceeds MAX_BODY_BYTES={catga_settings.MAX_BODY_BYTES}",
            )
        try:
            message = codec.decode(envelope.type, body)
        except (UndecodableMessage, ValidationFailed) as exc:  # the latter from the type's validate()
            return self.dead_on_arrival(envelope, body, str(exc))
        specs = self.registry.handlers_for(type(message), context)
        if not specs:
            if message.kind is Kind.EVENT:
                return Outcome(ACK)  # nobody here subscribes; not an error
            return self.dead_on_arrival(envelope, body, f"no handler for {envelope.type}")
        if _inbox(envelope):
            stored, created = history.ensure_received(envelope, codec.to_payload(message))
            forged = "" if created else _not_the_stored(stored, envelope, message)
            if forged:
                return Outcome(DEAD, reason=forged)  # the stored message's history is left as it is
        outcomes = [self.run(spec, message, envelope) for spec in specs]
        for action in (RETRY, DEAD):
            matching = [o for o in outcomes if o.action == action]
            if matching:
                return max(matching, key=lambda o: o.delay)
        return outcomes[0] if len(outcomes) == 1 else Outcome(ACK)

    def handle_many(self, calls: list[tuple[tuple, dict]], wanted=lambda index: True) -> list[Outcome | None]:
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
                    outcomes[index] = self.handle(*args, **kwargs)
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
            start = self._group(calls, start, end, wanted, outcomes, settled)
        return outcomes

    def _group(self, calls, start: int, end: int, wanted, outcomes: list, settled: list) -> int:
        """Settle calls from `start` (up to `end`) in one transaction; returns where the next group starts."""
        plain = []  # (index, envelope, message, specs)
        seen = set()
        for index in range(start, end):
            (envelope, body), kwargs = calls[index]
            message = self._decoded(envelope, body)
            if message is None:
                break
            specs = self.registry.handlers_for(type(message), kwargs.get("context"))
            if not specs and message.kind is not Kind.EVENT:
                break
            if envelope.id in seen:  # a second copy in one transaction would take the same lock again
                break
            seen.add(envelope.id)
            plain.append((index, envelope, message, specs))
        if not plain:
            args, kwargs = calls[start]
            outcomes[start], settled[start] = self.handle(*args, **kwargs), True
            return start + 1
        try:
            done, failure = self._in_one_transaction(plain, wanted)
        except DatabaseError:  # the group's own statements (a deadlock, a lost connection): one by one
            logger.warning("a group commit failed; handling its deliveries one by one", exc_info=True)
            done, failure = [], None
        if failure is not None:
            index, envelope, message, specs, spec, exc, started = failure
            if len(specs) == 1:  # recorded as `run` records a failure, without running it again
                outcomes[index] = self._failed(spec, message, envelope, exc, started)
            else:
                args, kwargs = calls[index]
                outcomes[index] = self.handle(*args, **kwargs)
            settled[index] = True
            return start  # the ones before it, again
        if not done:  # the first could not be claimed here: on its own
            args, kwargs = calls[start]
            outcomes[start], settled[start] = self.handle(*args, **kwargs), True
            return start + 1
        for index, outcome in done:
            outcomes[index], settled[index] = outcome, True
        return start + len(done)

    def _in_one_transaction(self, plain: list, wanted) -> tuple[list[tuple[int, Outcome]], tuple | None]:
        """Claim, run and record `plain` in one transaction; (what succeeded, the failure that rolled it back)."""
        closes = time.monotonic() + catga_settings.GROUP_COMMIT
        done: list[tuple[int, Outcome]] = []
        failure = None
        with transaction.atomic():
            plain = self._claimed(plain)
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
                        result = self._invoke(spec, message, envelope)
                    except Exception as exc:
                        failure = (index, envelope, message, specs, spec, exc, started)
                        break
                    if claim is not None:
                        succeeded.append((claim, envelope.attempt, started, timezone.now(), _jsonable(result)))
                    results.append(Outcome(ACK, result=result))
                if failure is not None:
                    transaction.set_rollback(True)
                    break
                done.append((index, results[0] if len(results) == 1 else Outcome(ACK)))
            if failure is None and succeeded:
                inbox.succeeded_many(succeeded)
        return ([] if failure else done), failure

    def _decoded(self, envelope: Envelope, body: bytes) -> Message | None:
        """The message, when nothing about it needs `handle`'s dead-letter path."""
        if len(body) > catga_settings.MAX_BODY_BYTES:
            return None
        try:
            message = codec.decode(envelope.type, body)
        except (UndecodableMessage, ValidationFailed):
            return None
        if envelope.attempt > self.max_attempts(message):
            return None
        return message

    def _claimed(self, plain: list) -> list:
        """The leading run of `plain` whose inbox records are claimed and whose stored copy matches.

        Each entry gains the claims of its handlers (None each for a delivery without inbox).
        """
        wanted = [
            (envelope.id, spec.name, spec.context, timezone.now())
            for _, envelope, _, specs in plain
            if _inbox(envelope)
            for spec in specs
        ]
        claims = iter(inbox.claim_many(wanted) if wanted else [])
        claimed = []
        for index, envelope, message, specs in plain:
            if not _inbox(envelope):
                claimed.append((index, envelope, message, specs, [None] * len(specs)))
                continue
            mine = [next(claims) for _ in specs]
            stored = mine[0] if mine else None
            if stored is not None and (
                stored.stored_type is None  # no row: `handle` stores what arrived
                or not all(claim.locked for claim in mine)  # handled elsewhere right now
                or _forged(stored, envelope, message)
            ):
                break
            claimed.append((index, envelope, message, specs, mine))
        return claimed

    def run(self, spec: HandlerSpec, message: Message, envelope: Envelope, *, raise_errors: bool = False) -> Outcome:
        """One handler, one attempt, in one transaction with its inbox record."""
        if not _inbox(envelope):
            return self._run_unrecorded(spec, message, envelope, raise_errors=raise_errors)
        started = timezone.now()
        try:
            # A caller that takes the error (execute) rolls its own transaction back: no savepoint.
            with transaction.atomic(savepoint=not raise_errors):
                # A copy of this message still being handled elsewhere (a timed-out stray, a
                # redelivery racing the original) makes this attempt fail fast (InboxBusy) and
                # retry later, instead of parking a handler thread on a lock.
                delivery = inbox.inbox_claim(envelope.id, spec.name, spec.context, started)
                if delivery.status in (Delivery.Status.SUCCEEDED, Delivery.Status.DEAD):
                    return Outcome(ACK, result=delivery.result, duplicate=True)
                if envelope.attempt > self.max_attempts(message):
                    raise AttemptsExhausted(f"delivered {envelope.attempt} times without settling")
                result = self._invoke(spec, message, envelope)
                inbox.inbox_succeeded(delivery, envelope.attempt, started, timezone.now(), _jsonable(result))
            return Outcome(ACK, result=result)
        except Exception as exc:
            if raise_errors:
                raise
            return self._failed(spec, message, envelope, exc, started)

    def _invoke(self, spec: HandlerSpec, message: Message, envelope: Envelope):
        """The handler through the pipeline, as the cause of what it sends; a chain or group
        member also advances its workflow (in the caller's transaction)."""
        token = current_envelope.set(envelope)
        try:
            result = self.pipeline.run(message, HandlerContext(envelope=envelope, handler=spec, mediator=self.mediator))
            if envelope.workflow and self.workflows is not None:
                self.workflows.member_succeeded(envelope, _jsonable(result), self.mediator)
            return result
        finally:
            current_envelope.reset(token)

    def _run_unrecorded(self, spec, message, envelope, *, raise_errors: bool) -> Outcome:
        """RECORD_HISTORY off, not ExactlyOnce: the handler in its transaction, no inbox row.

        A success leaves no trace in the history; a failure is recorded as usual (the
        admin's dead letters and replay need it).
        """
        started = timezone.now()
        try:
            if envelope.attempt > self.max_attempts(message):
                raise AttemptsExhausted(f"delivered {envelope.attempt} times without settling")
            with transaction.atomic():
                result = self._invoke(spec, message, envelope)
            return Outcome(ACK, result=result)
        except Exception as exc:
            if raise_errors:
                raise
            history.ensure_received(envelope, codec.to_payload(message))
            return self._failed(spec, message, envelope, exc, started)

    @staticmethod
    def max_attempts(message) -> int:
        return message.options.max_attempts or catga_settings.MAX_ATTEMPTS

    def timed_out(self, envelope: Envelope, seconds: float) -> Outcome:
        """The worker stopped waiting for a handler: retry the message, or bury it when out of attempts.

        Nothing is written here: the handler's thread still holds its inbox row and will
        record its own outcome; `note_timeout` adds the timeout to the log afterwards.
        """
        cls = message_type(envelope.type)
        reason = f"HandlerTimeout: handler did not finish within {seconds:g}s"
        if cls is not None and envelope.attempt >= self.max_attempts(cls):
            return Outcome(DEAD, reason=f"gave up after {envelope.attempt} attempts: {reason}")
        return Outcome(RETRY, delay=backoff(envelope.attempt), reason=reason)

    def note_timeout(self, envelope: Envelope, context: str | None, seconds: float) -> None:
        """Once a timed-out handler has ended, put the timeout on its delivery's record."""
        with transaction.atomic():
            for delivery in Delivery.objects.select_for_update().filter(message_id=envelope.id, context=context or ""):
                now = timezone.now()
                entry = history.log_entry(
                    envelope.attempt, now, now, "timed_out", f"HandlerTimeout: ran past its {seconds:g}s timeout"
                )
                delivery.attempt_log = [*delivery.attempt_log, entry]
                delivery.save(update_fields=["attempt_log"])

    def _failed(self, spec, message, envelope, exc, started) -> Outcome:
        if _lock_busy(exc):
            # Another copy of this delivery is still running (it holds the inbox row):
            # come back later; that copy records its own outcome, so write nothing here.
            return Outcome(RETRY, delay=max(backoff(envelope.attempt), 1.0), reason="busy: handled elsewhere")
        max_attempts = self.max_attempts(message)
        # AtMostOnce promises no second delivery: every failure is final.
        permanent = isinstance(exc, PermanentError) or envelope.qos is QoS.AT_MOST_ONCE
        exhausted = envelope.attempt >= max_attempts
        error = f"{type(exc).__name__}: {exc}"
        status = Delivery.Status.DEAD if (permanent or exhausted) else Delivery.Status.RETRYING
        with transaction.atomic():
            history.record_delivery_failure(
                envelope,
                spec.name,
                spec.context,
                status=status,
                started=started,
                error=error,
                tb="".join(traceback.format_exception(exc)),
            )
            if status == Delivery.Status.DEAD and envelope.workflow and self.workflows is not None:
                self.workflows.member_failed(envelope, error)
        if status == Delivery.Status.RETRYING:
            return Outcome(RETRY, delay=backoff(envelope.attempt), reason=error)
        why = "non-retryable error" if permanent else f"gave up after {envelope.attempt} attempts"
        return Outcome(DEAD, reason=f"{why}: {error}")

    def dead_on_arrival(self, envelope: Envelope, body: bytes, reason: str) -> Outcome:
        raw = {"raw": history.printable(body[:4096].decode("utf-8", "replace"))}
        with transaction.atomic():
            stored, created = history.ensure_received(envelope, raw)
            if not created and stored.status == MessageRow.Status.HANDLED:
                # A bad copy of a message already handled is not that message (its id was
                # reused): record it apart, leaving the original's history as it was.
                reason = f"{reason} (its id {envelope.id} names a message already handled)"
                envelope = msgspec.structs.replace(envelope, id=new_id())
                history.ensure_received(envelope, raw)
            now = timezone.now()
            history.record_delivery_failure(
                envelope, "(decode)", "", status=Delivery.Status.DEAD, started=now, error=reason, tb=""
            )
        return Outcome(DEAD, reason=reason)


def _forged(claim: inbox.Claim, envelope: Envelope, message: Message) -> bool:
    if claim.stored_type == envelope.type and claim.stored_payload == codec.to_payload(message):
        return False  # the common case, without building the stored message
    stored = MessageRow(id=envelope.id, type=claim.stored_type, payload=claim.stored_payload)
    return bool(_not_the_stored(stored, envelope, message))


def _not_the_stored(stored: MessageRow, envelope: Envelope, message: Message) -> str:
    """Why a message whose id the history already holds is not that message ("" when it is).

    The inbox is keyed by message id, so a copy reusing the id of another message (of
    another type, or with another body) must be neither applied in its place nor
    acknowledged as if it had been.
    """
    if stored.type != envelope.type:
        return f"forged message id: {envelope.id} names a {stored.type}, not a {envelope.type}"
    try:
        original = msgspec.convert(stored.payload, type(message))
    except msgspec.ValidationError:
        return ""  # recorded by another version of the type: the id is all there is to go on
    if original != message:
        return f"forged message id: {envelope.id} names a {stored.type} with another body"
    return ""


def _inbox(envelope: Envelope) -> bool:
    """Whether this delivery writes its history rows (Message + Delivery, the inbox)."""
    return envelope.qos is QoS.EXACTLY_ONCE or history.recording()


def _lock_busy(exc: BaseException) -> bool:
    """The inbox lock is held by another copy: InboxBusy, or lock_not_available from FOR UPDATE NOWAIT."""
    if isinstance(exc, inbox.InboxBusy):
        return True
    return isinstance(exc, OperationalError) and getattr(exc.__cause__, "sqlstate", None) == "55P03"


def _jsonable(value: Any) -> Any:
    if value is None:
        return None
    try:
        return msgspec.to_builtins(value, str_keys=True, enc_hook=str)
    except TypeError:
        return repr(value)
