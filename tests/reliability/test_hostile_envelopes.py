"""Hostile headers and forged ids, at the dispatcher (no NATS): refused, recorded, never applied.

Each of these once left a message that no worker could settle (the history write
failed on every redelivery) or let a forged copy stand in for a real message.
"""

from types import SimpleNamespace

import msgspec
import pytest

from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import UndecodableMessage, ValidationFailed
from apps.mediator.core.messages import Command, Kind, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.outcome import ACK, DEAD
from apps.mediator.models import Delivery, Message

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]


class Tally(Command):
    counter: str
    by: int

    class Meta:
        context = "hostile"

    def validate(self):
        if self.by > 100:
            raise ValidationFailed({"by": ["At most 100 at a time."]})


class Reset(Command):
    counter: str

    class Meta:
        context = "hostile"


counters: dict[str, int] = {}


def tally(command, ctx):
    counters[command.counter] = counters.get(command.counter, 0) + command.by


def reset(command, ctx):
    counters[command.counter] = 0


@pytest.fixture
def dispatcher():
    counters.clear()
    registry = Registry.from_maps({"hostile": SimpleNamespace(COMMANDS={Tally: tally, Reset: reset})})
    return Dispatcher(registry, Pipeline([]))


def headers(**changes) -> dict:
    return {**Envelope.for_message(Tally(counter="c", by=1), qos=QoS.AT_LEAST_ONCE).to_headers(), **changes}


@pytest.mark.parametrize(
    "bad",
    [
        {"Catga-Created-At": "nan"},
        {"Catga-Created-At": "1e300"},
        {"Catga-Not-Before": "-inf"},
        {"Catga-Message-Id": "F" * 27},
        {"Catga-Correlation-Id": "C" * 100},
        {"Catga-Causation-Id": "01\x00"},
        {"Catga-Type": "hostile." + "Z" * 200},
        {"traceparent": "00-\x00"},
    ],
)
def test_headers_that_parse_but_cannot_be_recorded_are_refused_as_undecodable(bad):
    with pytest.raises(UndecodableMessage, match="bad header value"):
        Envelope.from_headers(headers(**bad))


def test_a_dead_letter_with_an_oversized_type_is_still_recorded(dispatcher):
    # What the worker builds for a message whose headers were refused: the type as it came.
    stand_in = Envelope(
        id="01STANDIN0000000000000000A",
        type="hostile." + "Z" * 400 + "\x00",
        kind=Kind.COMMAND,
        correlation_id="01STANDIN0000000000000000A",
        created_at=0.0,
    )
    outcome = dispatcher.dead_on_arrival(stand_in, b"{}", "bad header value: too long")
    assert outcome.action == DEAD
    row = Message.objects.get(pk=stand_in.id)
    assert row.status == "dead" and row.type.startswith("hostile.ZZZ") and len(row.type) == 200


def test_a_message_its_own_validate_refuses_is_dead_lettered_not_raised(dispatcher):
    envelope = Envelope.for_message(Tally(counter="c", by=1), qos=QoS.AT_LEAST_ONCE)
    outcome = dispatcher.handle(envelope, b'{"counter": "c", "by": 1000}')
    assert outcome.action == DEAD and "At most 100 at a time" in outcome.reason
    assert Delivery.objects.get(message_id=envelope.id).status == "dead"
    assert counters == {}


def test_a_forged_copy_of_a_handled_message_is_dead_lettered_and_applies_nothing(dispatcher):
    genuine = Tally(counter="c", by=1)
    envelope = Envelope.for_message(genuine, qos=QoS.AT_LEAST_ONCE)
    assert dispatcher.handle(envelope, msgspec.json.encode(genuine)).action == ACK
    again = dispatcher.handle(envelope.with_attempt(2), msgspec.json.encode(genuine))
    assert (again.action, again.duplicate) == (ACK, True)  # a real redelivery: acknowledged, not re-applied

    other_body = dispatcher.handle(envelope, msgspec.json.encode(Tally(counter="c", by=50)))
    other_type = dispatcher.handle(
        msgspec.structs.replace(envelope, type="hostile.Reset"), msgspec.json.encode(Reset(counter="c"))
    )
    garbage = dispatcher.handle(envelope, b"\xff\xfe")

    assert (other_body.action, other_type.action, garbage.action) == (DEAD, DEAD, DEAD)
    assert "forged message id" in other_body.reason and "with another body" in other_body.reason
    assert "names a hostile.Tally, not a hostile.Reset" in other_type.reason
    assert "names a message already handled" in garbage.reason
    assert counters == {"c": 1}
    # The original's history is as it was; the garbage copy is recorded apart.
    assert Message.objects.get(pk=envelope.id).status == "handled"
    assert list(Delivery.objects.filter(message_id=envelope.id).values_list("status", "attempts")) == [("succeeded", 1)]
    assert Delivery.objects.filter(handler="(decode)", error__contains=envelope.id).count() == 1


def test_a_not_yet_handled_message_is_not_replaced_by_a_forged_copy(dispatcher):
    genuine = Tally(counter="c", by=1)
    envelope = Envelope.for_message(genuine, qos=QoS.AT_LEAST_ONCE)
    # The sender's outbox row exists before any worker sees the message.
    Message.objects.create(
        id=envelope.id,
        type="hostile.Tally",
        kind="command",
        context="hostile",
        correlation_id=envelope.correlation_id,
        qos="at_least_once",
        status="published",
        payload={"counter": "c", "by": 1},
        created_at="2026-01-01T00:00:00Z",
    )
    forged = dispatcher.handle(envelope, msgspec.json.encode(Tally(counter="c", by=99)))
    assert forged.action == DEAD and "forged message id" in forged.reason
    assert dispatcher.handle(envelope, msgspec.json.encode(genuine)).action == ACK
    assert counters == {"c": 1}
