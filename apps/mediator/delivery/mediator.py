"""The mediator: send commands, publish events, ask queries.

    handle = mediator.send(ReserveStock(order_id=..., lines=...))
    mediator.publish(OrderPlaced(order_id=...))
    order = mediator.ask(GetOrder(order_id=...))
    result = mediator.execute(PlaceOrder(...))   # in-process, in this transaction

`send` and `publish` store the message in the outbox inside the caller's
transaction and hand it to the transport after commit, so a rolled-back
transaction sends nothing. Inside a handler, the message being handled becomes
the cause of everything sent, and its correlation id is carried on.
"""

import datetime as dt
import math
import time
from dataclasses import dataclass

from django.db import transaction

from apps.mediator.core import codec
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.context import current_envelope
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import NoHandler
from apps.mediator.core.messages import Command, Event, Message, QoS, Query
from apps.mediator.core.pipeline import HandlerContext
from apps.mediator.core.ports import Outgoing, Transport
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.checks import inbox_on
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.models import Delivery
from apps.mediator.models import Message as MessageRow
from apps.mediator.observability import metrics, tracing
from apps.mediator.storage import history


@dataclass(frozen=True)
class Handle:
    """What `send` returns: the message id, and its status from the history."""

    message_id: str

    def status(self) -> str | None:
        row = MessageRow.objects.filter(pk=self.message_id).values_list("status", flat=True).first()
        return row

    def deliveries(self) -> list[Delivery]:
        return list(Delivery.objects.filter(message_id=self.message_id))

    def wait(self, timeout: float = 30.0, *, interval: float = 0.05):
        """Block until the message is handled and return its handler's result (JSON form).

        Raises HandlerFailed if it ended dead, revoked or expired, TimeoutError if it is not finished in time.
        Polls the history, so it works from any process that shares the database.
        """
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            if status == MessageRow.Status.HANDLED:
                results = [d.result for d in self.deliveries() if d.status == Delivery.Status.SUCCEEDED]
                return results[0] if len(results) == 1 else results
            if status == MessageRow.Status.DEAD:
                errors = [d.error for d in self.deliveries() if d.status == Delivery.Status.DEAD]
                raise HandlerFailed(self.message_id, "; ".join(errors) or "dead")
            if status in (MessageRow.Status.REVOKED, MessageRow.Status.EXPIRED):
                raise HandlerFailed(self.message_id, f"{status}: it will not be handled")
            if time.monotonic() >= deadline:
                raise TimeoutError(f"message {self.message_id} not handled within {timeout}s (status {status})")
            time.sleep(interval)

    def result(self, timeout: float = 30.0):
        return self.wait(timeout)


Expiry = float | dt.timedelta | dt.datetime


def expiry(expires: Expiry | None, not_before: float | None) -> float | None:
    """`expires` as seconds since the epoch: seconds (or a timedelta) from now, or a datetime.

    Refused with a ValueError naming it: zero, negative or not finite seconds, a time in
    the past, or one not after the message is due (its countdown or eta).
    """
    if expires is None:
        return None
    now = time.time()
    if isinstance(expires, dt.timedelta):
        expires = expires.total_seconds()
    if isinstance(expires, dt.datetime):
        at = expires.timestamp()
        if at <= now:
            raise ValueError(f"expires={expires.isoformat()} is in the past")
    elif isinstance(expires, int | float) and not isinstance(expires, bool):
        if not math.isfinite(expires) or expires <= 0:
            raise ValueError(f"expires must be a positive number of seconds, not {expires!r}")
        at = now + expires
    else:
        raise TypeError(f"expires takes seconds, a timedelta or a datetime, not {type(expires).__name__}")
    if not_before is not None and at <= not_before:
        raise ValueError("expires must be after the message is due (its countdown or eta)")
    return at


class HandlerFailed(Exception):
    def __init__(self, message_id: str, error: str):
        self.message_id, self.error = message_id, error
        super().__init__(f"message {message_id} failed: {error}")


class Mediator:
    def __init__(self, registry: Registry, dispatcher: Dispatcher, transport: Transport):
        self.registry = registry
        self.dispatcher = dispatcher
        self.transport = transport
        dispatcher.mediator = self

    def send(
        self,
        command: Command,
        *,
        countdown: float | None = None,
        eta: dt.datetime | None = None,
        expires: Expiry | None = None,
    ) -> Handle:
        """`countdown` (seconds) or `eta` schedule it; past `expires` (seconds from now, or a
        datetime) it is recorded as expired instead of handled."""
        if not isinstance(command, Command):
            raise TypeError(f"send() takes a Command, not {type(command).__name__}")
        if countdown is not None and eta is not None:
            raise ValueError("give countdown or eta, not both")
        not_before = None
        if countdown is not None:
            not_before = time.time() + countdown
        elif eta is not None:
            not_before = eta.timestamp()
        return self.post(command, not_before=not_before, expires=expiry(expires, not_before))

    def publish(self, event: Event, *, expires: Expiry | None = None) -> Handle:
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, not {type(event).__name__}")
        return self.post(event, expires=expiry(expires, None))

    def ask(self, query: Query):
        if not isinstance(query, Query):
            raise TypeError(f"ask() takes a Query, not {type(query).__name__}")
        spec = self._single_handler(query)
        envelope = Envelope.for_message(query, qos=QoS.AT_MOST_ONCE, cause=current_envelope.get())
        return self.dispatcher.pipeline.run(query, HandlerContext(envelope=envelope, handler=spec, mediator=self))

    def execute(self, command: Command, *, correlation_id: str | None = None):
        """Run a command's handler here and now, inside the caller's transaction.

        For the entry points that must answer with the handler's result (a REST
        view creating an order); the history records it like any delivery. Give
        `correlation_id` to make it part of an existing conversation.
        """
        spec = self._single_handler(command)
        codec.validated(command)
        envelope = self._envelope(command, None, correlation_id=correlation_id)
        if inbox_on(envelope, command):
            return self.dispatcher.run_here(spec, command, envelope)
        return self.dispatcher.run(spec, command, envelope, raise_errors=True).result

    def _single_handler(self, message: Message):
        spec = self.registry.handler_for(type(message))
        if spec is None:
            raise NoHandler(f"no handler registered for {message.options.wire_name}")
        return spec

    def _envelope(self, message: Message, not_before: float | None = None, **extra) -> Envelope:
        qos = QoS(message.options.qos or catga_settings.DEFAULT_QOS)
        return Envelope.for_message(message, qos=qos, cause=current_envelope.get(), not_before=not_before, **extra)

    def post(
        self,
        message: Message,
        *,
        not_before: float | None = None,
        expires: float | None = None,
        workflow: str | None = None,
        correlation_id: str | None = None,
        message_id: str | None = None,
    ) -> Handle:
        """Store `message` in the outbox of the caller's transaction and hand it over after commit.

        `send` and `publish` are this with their checks; orchestration names the workflow
        member or the conversation a message belongs to; a schedule gives its tick's id.
        """
        codec.validated(message)
        envelope = self._envelope(
            message,
            not_before,
            expires=expires,
            workflow=workflow,
            correlation_id=correlation_id,
            message_id=message_id,
        )
        envelope = tracing.stamp(envelope)  # a send span, its trace context in the envelope
        body = codec.encode(message)
        # AtMostOnce skips the outbox: recorded as already published, never relayed again
        # (and not stored at all without history: the row would only be history).
        if envelope.qos is not QoS.AT_MOST_ONCE:
            history.store_outgoing(envelope, codec.to_payload(message), status=MessageRow.Status.PENDING)
        elif history.recording():
            history.store_outgoing(envelope, codec.to_payload(message), status=MessageRow.Status.PUBLISHED)

        def hand_over() -> None:
            metrics.count_sent(envelope)
            self.transport.publish([Outgoing(envelope, body)])

        transaction.on_commit(hand_over)
        return Handle(envelope.id)
