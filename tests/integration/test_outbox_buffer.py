"""A transaction's outbox rows are written in one INSERT (apps.mediator.storage.backends.postgresql).

The rows wait in the connection's buffer until the next statement or the commit, so
the transaction still reads its own writes, a rolled-back savepoint still sends
nothing of what it sent, and a rolled-back transaction sends nothing at all.
"""

from types import SimpleNamespace

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.mediator.core.messages import Command
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import Mediator
from apps.mediator.models import Message
from apps.mediator.transports.memory import MemoryTransport

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class Note(Command):
    n: int

    class Meta:
        context = "desk"


handled: list[int] = []


def note(command, ctx):
    handled.append(command.n)


@pytest.fixture
def desk():
    handled.clear()
    registry = Registry.from_maps({"desk": SimpleNamespace(COMMANDS={Note: note})})
    dispatcher = Dispatcher(registry, Pipeline([]))
    return Mediator(registry, dispatcher, MemoryTransport(dispatcher))


def inserts(queries) -> int:
    return sum(1 for q in queries if q["sql"].startswith(f'INSERT INTO "{Message._meta.db_table}"'))


def test_the_sends_of_a_transaction_are_one_insert_written_before_the_commit(desk):
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        handles = [desk.send(Note(n=i)) for i in range(10)]

    assert inserts(queries) == 1
    assert handled == list(range(10))  # handed over after the commit, found in the history
    assert {h.status() for h in handles} == {"handled"}


def test_the_transaction_reads_its_own_sends(desk):
    with transaction.atomic():
        handle = desk.send(Note(n=1))
        assert Message.objects.filter(pk=handle.message_id, status="pending").exists()


def test_a_rolled_back_savepoint_drops_what_was_sent_inside_it(desk):
    with transaction.atomic():
        kept = desk.send(Note(n=1))
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            dropped = desk.send(Note(n=2))
            1 / 0  # noqa: B018
        also = desk.send(Note(n=3))

    assert handled == [1, 3]
    assert kept.status() == also.status() == "handled" and dropped.status() is None


def test_a_rolled_back_transaction_stores_and_sends_nothing(desk):
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        desk.send(Note(n=1))
        desk.send(Note(n=2))
        1 / 0  # noqa: B018

    assert handled == [] and not Message.objects.exists()
    with transaction.atomic():  # the buffer was dropped with the transaction
        desk.send(Note(n=3))
    assert handled == [3] and Message.objects.count() == 1


def test_outside_a_transaction_a_send_is_written_at_once(desk):
    with CaptureQueriesContext(connection) as queries:
        handle = desk.send(Note(n=1))

    assert inserts(queries) == 1 and handle.status() == "handled"
