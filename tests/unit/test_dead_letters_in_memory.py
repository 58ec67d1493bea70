"""Failures recorded in the history by the dispatcher (transport-independent)."""

from types import SimpleNamespace

import pytest
from django.db import transaction

from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import PermanentError
from apps.mediator.core.messages import Command, Kind, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import Mediator
from apps.mediator.delivery.outcome import DEAD
from apps.mediator.models import Delivery, Message
from apps.mediator.transports.memory import MemoryTransport

pytestmark = pytest.mark.django_db(transaction=True)


class Explode(Command):
    permanent: bool

    class Meta:
        context = "workshop"
        max_attempts = 3


calls = []


def explode(command, ctx):
    calls.append(ctx.attempt)
    if command.permanent:
        raise PermanentError("the recipe is wrong")
    raise RuntimeError("kettle unplugged")


@pytest.fixture
def lab():
    calls.clear()
    registry = Registry.from_maps({"workshop": SimpleNamespace(COMMANDS={Explode: explode})})
    dispatcher = Dispatcher(registry, Pipeline([]))
    return Mediator(registry, dispatcher, MemoryTransport(dispatcher))


def test_a_failing_handler_is_retried_up_to_max_attempts_then_dead(lab):
    with transaction.atomic():
        handle = lab.send(Explode(permanent=False))

    assert calls == [1, 2, 3]
    delivery = Delivery.objects.get(message_id=handle.message_id)
    assert delivery.status == "dead" and delivery.attempts == 3
    assert "RuntimeError: kettle unplugged" in delivery.error
    assert "Traceback" in delivery.traceback
    assert [e["outcome"] for e in delivery.attempt_log] == ["retrying", "retrying", "dead"]
    assert handle.status() == "dead"


def test_a_permanent_error_skips_retries(lab):
    with transaction.atomic():
        handle = lab.send(Explode(permanent=True))

    assert calls == [1]
    assert Delivery.objects.get(message_id=handle.message_id).status == "dead"


def test_a_rolled_back_transaction_sends_nothing(lab):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        lab.send(Explode(permanent=False))
        1 / 0  # noqa: B018

    assert calls == []
    assert Message.objects.count() == 0


def test_undecodable_and_unknown_messages_are_dead_with_a_reason(lab):
    envelope = Envelope.for_message(Explode(permanent=False), qos=QoS.AT_LEAST_ONCE)
    outcome = lab.dispatcher.handle(envelope, b"\x00\x01 not json")
    assert outcome.action == DEAD and "undecodable body" in outcome.reason
    assert Delivery.objects.get(message_id=envelope.id).error.startswith("undecodable body")

    unknown = Envelope(
        id="01AAAAAAAAAAAAAAAAAAAAAAAA",
        type="workshop.Nope",
        kind=Kind.COMMAND,
        correlation_id="01AAAAAAAAAAAAAAAAAAAAAAAA",
        created_at=0.0,
    )
    outcome = lab.dispatcher.handle(unknown, b"{}")
    assert outcome.action == DEAD and "unknown message type" in outcome.reason
    assert Message.objects.get(pk=unknown.id).status == "dead"
