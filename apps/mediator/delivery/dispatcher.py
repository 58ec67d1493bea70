"""Run the handlers of one received message and say how to settle it.

Every transport hands what it receives to `Dispatcher.handle`, which returns an
Outcome (ack, retry after a delay, or dead with a reason). The transport only
turns that outcome into its own acknowledgement; the decision is made here, once.
"""

import logging
import traceback
from typing import Any, Protocol

import msgspec
from django.db import transaction
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
from apps.mediator.delivery import group_commit
from apps.mediator.delivery.checks import inbox_on, jsonable, lock_busy, not_the_stored
from apps.mediator.delivery.outcome import ACK, DEAD, OUTAGE, RETRY, Outcome, backoff, outage_backoff
from apps.mediator.models import Delivery
from apps.mediator.models import Message as MessageRow
from apps.mediator.storage import history, inbox, outage

logger = logging.getLogger("catga.worker")

# A revoked, purged or expired message: its delivery is acknowledged, its handlers not run.
SKIPPED = "{status}: settled without running its handlers"


class WorkflowHooks(Protocol):
    """The chain/group bookkeeping (orchestration), called in the member handler's transaction."""

    def member_succeeded(self, envelope: Envelope, result: Any, mediator) -> None: ...

    def member_failed(self, envelope: Envelope, error: str) -> None: ...

    def members_cancelled(self, message_ids, status: str) -> None: ...


class TimerHooks(Protocol):
    """The sagas' step deadlines (orchestration), fired by the consumers' sweep and `run_due`."""

    def fire_due(self, post, *, types=None, now=None) -> int: ...


class Dispatcher:
    def __init__(
        self,
        registry: Registry,
        pipeline: Pipeline,
        *,
        workflows: WorkflowHooks | None = None,
        timers: TimerHooks | None = None,
    ):
        self.registry = registry
        self.pipeline = pipeline
        self.workflows = workflows
        self.timers = timers
        self.mediator = None  # the Mediator this dispatcher serves: handlers get it as ctx.mediator
        # (message id, handler) of runs the worker stopped waiting for: their timeout is
        # recorded as their attempt, so their own late failure must not count again.
        self._strays: set[tuple[str, str]] = set()

    def handle(self, envelope: Envelope, body: bytes, *, context: str | None = None) -> Outcome:
        """The outcome of one delivery; never raises, whatever its bytes or the database's state."""
        try:
            return self._handle(envelope, body, context)
        except Exception as exc:
            return self.unhandled(envelope, body, exc)

    def unhandled(self, envelope: Envelope, body: bytes, exc: Exception) -> Outcome:
        """What escaped decoding, recording or routing: a free retry while the database is away, else dead."""
        if outage.unavailable(exc):
            return self.outage(envelope, exc)
        if isinstance(exc, UndecodableMessage):
            reason = str(exc)
        else:
            reason = f"could not be handled: {type(exc).__name__}: {exc}"[:2000]
            logger.error("%s %s %s", envelope.type, envelope.id, reason, exc_info=exc)
        try:
            return self.dead_on_arrival(envelope, body, reason)
        except Exception as again:
            if outage.unavailable(again):
                return self.outage(envelope, again)
            logger.exception("could not record the dead letter of %s", envelope.id)
            return Outcome(DEAD, reason=reason)  # the dead-letter stream still has it, with the reason

    @staticmethod
    def outage(envelope: Envelope, exc: BaseException) -> Outcome:
        reason = f"{OUTAGE}: {type(exc).__name__}: {str(exc)[:200]}"
        return Outcome(RETRY, delay=outage_backoff(envelope.attempt), reason=reason, outage=True)

    def _handle(self, envelope: Envelope, body: bytes, context: str | None) -> Outcome:
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
        if envelope.expired():
            history.record_expired(envelope, codec.to_payload(message))
            return self.skipped(envelope, MessageRow.Status.EXPIRED)
        if inbox_on(envelope, message):
            stored, created = history.ensure_received(envelope, codec.to_payload(message))
            forged = "" if created else not_the_stored(stored, envelope, message)
            if forged:
                return Outcome(DEAD, reason=forged)  # the stored message's history is left as it is
            if stored.status in history.NOT_TO_HANDLE:  # revoked or purged: settled, never handled
                return self.skipped(envelope, stored.status)
        outcomes = [self.run(spec, message, envelope) for spec in specs]
        for action in (RETRY, DEAD):
            matching = [o for o in outcomes if o.action == action]
            if matching:
                return max(matching, key=lambda o: o.delay)
        return outcomes[0] if len(outcomes) == 1 else Outcome(ACK)

    def skipped(self, envelope: Envelope, status: str) -> Outcome:
        """Settled unrun (revoked, purged, expired): a chain or group it belongs to fails, as on death."""
        if envelope.workflow and self.workflows is not None:
            with transaction.atomic():
                self.workflows.member_failed(envelope, f"{status}: it will not be handled")
        return Outcome(ACK, reason=SKIPPED.format(status=status))

    def handle_many(self, calls: list[tuple[tuple, dict]], wanted=lambda index: True) -> list[Outcome | None]:
        """Several deliveries, the `(args, kwargs)` of `handle`, committed together where they can be."""
        return group_commit.handle_many(self, calls, wanted)

    def run(self, spec: HandlerSpec, message: Message, envelope: Envelope, *, raise_errors: bool = False) -> Outcome:
        """One handler, one attempt, in one transaction with its inbox record.

        The attempt number is the record's: handler failures so far, plus this one. The
        broker's delivery count also counts redeliveries after outages and crashes, in
        which the handler never failed.
        """
        if not inbox_on(envelope, message):
            return self._run_unrecorded(spec, message, envelope, raise_errors=raise_errors)
        started = timezone.now()
        try:
            # A caller that takes the error (execute) rolls its own transaction back: no savepoint.
            with transaction.atomic(savepoint=not raise_errors):
                # A copy of this message still being handled elsewhere (a timed-out stray, a
                # redelivery racing the original) makes this attempt fail fast (InboxBusy) and
                # retry later, instead of parking a handler thread on a lock.
                delivery, status = inbox.inbox_claim(envelope.id, spec.name, spec.context, started)
                if status in history.NOT_TO_HANDLE:  # revoked meanwhile (the claim read it locked)
                    return self.skipped(envelope, status)
                if delivery.status in (Delivery.Status.SUCCEEDED, Delivery.Status.DEAD):
                    return Outcome(ACK, result=delivery.result, duplicate=True)
                envelope = envelope.with_attempt(delivery.attempts + 1)
                if envelope.attempt > self.max_attempts(message):  # MAX_ATTEMPTS lowered since
                    raise AttemptsExhausted(f"failed {delivery.attempts} times")
                result = self.invoke(spec, message, envelope)
                inbox.inbox_succeeded(delivery, envelope.attempt, started, timezone.now(), jsonable(result))
            return Outcome(ACK, result=result)
        except Exception as exc:
            if raise_errors:
                raise
            return self.failed(spec, message, envelope, exc, started)

    def run_here(self, spec: HandlerSpec, message: Message, envelope: Envelope):
        """`Mediator.execute` with history: the handler in the caller's transaction, then its
        message and succeeded delivery written in one statement; errors propagate.

        Nothing to claim: the message was never published, its id is new."""
        started = timezone.now()
        with transaction.atomic(savepoint=False):
            result = self.invoke(spec, message, envelope)
            history.store_executed(
                envelope,
                codec.to_payload(message),
                handler=spec.name,
                context=spec.context,
                started=started,
                finished=timezone.now(),
                result=jsonable(result),
            )
        return result

    def invoke(self, spec: HandlerSpec, message: Message, envelope: Envelope):
        """The handler through the pipeline, as the cause of what it sends; a chain or group
        member also advances its workflow (in the caller's transaction)."""
        token = current_envelope.set(envelope)
        try:
            result = self.pipeline.run(message, HandlerContext(envelope=envelope, handler=spec, mediator=self.mediator))
            if envelope.workflow and self.workflows is not None:
                self.workflows.member_succeeded(envelope, jsonable(result), self.mediator)
            return result
        finally:
            current_envelope.reset(token)

    def _run_unrecorded(self, spec, message, envelope, *, raise_errors: bool) -> Outcome:
        """RECORD_HISTORY off, not ExactlyOnce: the handler in its transaction, no inbox row.

        A success leaves no trace in the history; a failure is recorded as usual (the
        admin's dead letters and replay need it), and a redelivery reads its attempt
        number from that record.
        """
        started = timezone.now()
        try:
            if envelope.attempt > 1:
                failures = Delivery.objects.filter(message_id=envelope.id, handler=spec.name).values_list(
                    "attempts", flat=True
                )
                envelope = envelope.with_attempt(next(iter(failures), 0) + 1)
                if envelope.attempt > self.max_attempts(message):
                    raise AttemptsExhausted(f"failed {envelope.attempt - 1} times")
            with transaction.atomic():
                result = self.invoke(spec, message, envelope)
            return Outcome(ACK, result=result)
        except Exception as exc:
            if raise_errors:
                raise
            if outage.unavailable(exc):
                return self.outage(envelope, exc)
            history.ensure_received(envelope, codec.to_payload(message))
            return self.failed(spec, message, envelope, exc, started)

    @staticmethod
    def max_attempts(message) -> int:
        return message.options.max_attempts or catga_settings.MAX_ATTEMPTS

    def timed_out(self, envelope: Envelope, context: str | None, seconds: float) -> Outcome:
        """The worker stopped waiting for a handler: its timeout is recorded as a failed attempt,
        and the message retried, or buried when out of attempts.

        The handler's thread (the stray) still runs and holds the inbox claim, so its retry
        waits for it; should it still succeed, its success is recorded over the timeout.
        """
        reason = f"HandlerTimeout: handler did not finish within {seconds:g}s"
        cls = message_type(envelope.type)
        specs = self.registry.handlers_for(cls, context) if cls is not None else []
        dead = False
        try:
            with transaction.atomic():
                history.ensure_received(envelope, {"raw": "(timed out before it was recorded)"})
                for spec in specs:
                    self._strays.add((envelope.id, spec.name))
                    failures = Delivery.objects.filter(message_id=envelope.id, handler=spec.name).values_list(
                        "attempts", flat=True
                    )
                    attempt = next(iter(failures), 0) + 1
                    dead = dead or attempt >= self.max_attempts(cls)
                    history.record_delivery_failure(
                        envelope.with_attempt(attempt),
                        spec.name,
                        spec.context,
                        status=Delivery.Status.DEAD if dead else Delivery.Status.RETRYING,
                        started=timezone.now(),
                        error=reason,
                        tb="",
                        only_if_unfinished=True,
                        outcome="timed_out",
                    )
        except Exception as exc:
            if outage.unavailable(exc):
                return self.outage(envelope, exc)
            raise
        if dead:
            return Outcome(DEAD, reason=f"gave up after {self.max_attempts(cls)} attempts: {reason}")
        return Outcome(RETRY, delay=backoff(envelope.attempt), reason=reason)

    def stray_ended(self, envelope: Envelope, context: str | None) -> None:
        """A timed-out handler thread has ended: its next failure counts again."""
        cls = message_type(envelope.type)
        for spec in self.registry.handlers_for(cls, context) if cls is not None else []:
            self._strays.discard((envelope.id, spec.name))

    def failed(self, spec, message, envelope, exc, started) -> Outcome:
        if outage.unavailable(exc):
            return self.outage(envelope, exc)
        if (envelope.id, spec.name) in self._strays:
            # A run the worker stopped waiting for: its timeout was its recorded attempt,
            # and its retry (which this claim held back) settles the message.
            return Outcome(RETRY, delay=backoff(envelope.attempt), reason=f"{type(exc).__name__} after its timeout")
        if lock_busy(exc):
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
