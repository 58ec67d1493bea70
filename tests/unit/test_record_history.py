"""CATGA["RECORD_HISTORY"] off: only what delivery needs is written (in-memory transport)."""

from types import SimpleNamespace

import pytest
from django.db import transaction

from apps.mediator.core.errors import PermanentError
from apps.mediator.core.messages import Command, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import Mediator
from apps.mediator.models import Delivery, Message
from apps.mediator.transports.memory import MemoryTransport

pytestmark = pytest.mark.django_db(transaction=True)


class Stamp(Command):
    n: int
    fail: bool = False

    class Meta:
        context = "ledger"


class StampOnce(Command):
    n: int

    class Meta:
        context = "ledger"
        qos = QoS.EXACTLY_ONCE


class Whisper(Command):
    n: int

    class Meta:
        context = "ledger"
        qos = QoS.AT_MOST_ONCE


handled = []


def stamp(command, ctx):
    if getattr(command, "fail", False):
        raise PermanentError("no ink")
    handled.append((type(command).__name__, command.n))


@pytest.fixture
def ledger(settings):
    handled.clear()
    settings.CATGA = {**settings.CATGA, "RECORD_HISTORY": False}
    registry = Registry.from_maps(
        {"ledger": SimpleNamespace(COMMANDS={Stamp: stamp, StampOnce: stamp, Whisper: stamp})}
    )
    dispatcher = Dispatcher(registry, Pipeline([]))
    return Mediator(registry, dispatcher, MemoryTransport(dispatcher))


def test_an_at_least_once_message_is_handled_and_leaves_no_rows(ledger):
    with transaction.atomic():
        ledger.send(Stamp(n=1))
        assert Message.objects.count() == 1  # the outbox row, in the sender's transaction

    assert handled == [("Stamp", 1)]
    assert not Message.objects.exists() and not Delivery.objects.exists()


def test_an_exactly_once_message_keeps_its_inbox_record(ledger):
    with transaction.atomic():
        handle = ledger.send(StampOnce(n=2))

    assert handled == [("StampOnce", 2)]
    assert Delivery.objects.get(message_id=handle.message_id).status == "succeeded"
    assert handle.status() == "handled"


def test_an_at_most_once_message_is_never_stored(ledger):
    with transaction.atomic():
        ledger.send(Whisper(n=3))
        assert not Message.objects.exists()

    assert handled == [("Whisper", 3)]
    assert not Message.objects.exists()


def test_a_failure_is_recorded_even_without_history(ledger):
    with transaction.atomic():
        handle = ledger.send(Stamp(n=4, fail=True))

    assert handled == []
    delivery = Delivery.objects.get(message_id=handle.message_id)
    assert delivery.status == "dead" and "no ink" in delivery.error
    assert handle.status() == "dead"


def test_a_rolled_back_transaction_still_sends_nothing(ledger):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        ledger.send(Stamp(n=5))
        1 / 0  # noqa: B018

    assert handled == [] and not Message.objects.exists()
