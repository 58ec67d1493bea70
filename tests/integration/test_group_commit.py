"""The group commit (Dispatcher.handle_many) on PostgreSQL: several deliveries, one transaction.

What a handler thread takes in one hand-off is claimed in one statement, recorded in
one and committed once; anything that cannot simply succeed is settled on its own,
and no effect is applied twice.
"""

from types import SimpleNamespace

import pytest
from django.db import connection
from django.db.models import F
from django.test.utils import CaptureQueriesContext

from apps.inventory.models import Item
from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.errors import TransientError
from apps.mediator.core.messages import Command, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.outcome import ACK, DEAD, RETRY
from apps.mediator.models import Delivery, Message
from apps.mediator.storage import history

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


class Take(Command):
    n: int
    fail: bool = False
    deadlock: bool = False  # the first run meets a lock cycle PostgreSQL breaks

    class Meta:
        context = "shelf"


class TakeOnce(Command):
    n: int

    class Meta:
        context = "shelf"
        qos = QoS.EXACTLY_ONCE


runs: list[int] = []


def take(command, ctx):
    runs.append(command.n)
    Item.objects.filter(sku="SHELF").update(on_hand=F("on_hand") - 1)
    if getattr(command, "fail", False):
        raise TransientError("the shelf wobbled")
    if getattr(command, "deadlock", False) and runs.count(command.n) == 1:
        with connection.cursor() as cursor:  # the error PostgreSQL raises when it breaks a cycle
            cursor.execute(
                "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected'; END $$"
            )


@pytest.fixture
def shelf(settings):
    settings.CATGA = {**settings.CATGA, "GROUP_COMMIT": 5.0}
    runs.clear()
    Item.objects.create(sku="SHELF", name="Shelf", price="1.00", on_hand=100)
    registry = Registry.from_maps({"shelf": SimpleNamespace(COMMANDS={Take: take, TakeOnce: take})})
    return Dispatcher(registry, Pipeline([]))


def sent(message, *, attempt: int = 1):
    """A message as a consumer receives it, its outbox row stored as the sender stores it."""
    envelope = Envelope.for_message(message, qos=QoS(message.options.qos or QoS.AT_LEAST_ONCE))
    history.store_outgoing(envelope, codec.to_payload(message), status=Message.Status.PUBLISHED)
    return envelope.with_attempt(attempt), codec.encode(message)


def calls(*deliveries):
    return [((envelope, body), {"context": "shelf"}) for envelope, body in deliveries]


def transactions(queries) -> tuple[int, int]:
    """(transactions committed, other statements) among captured queries."""
    sql = [q["sql"] for q in queries]
    assert sql.count("BEGIN") == sql.count("COMMIT"), sql
    return sql.count("COMMIT"), len(sql) - 2 * sql.count("COMMIT")


def on_hand() -> int:
    return Item.objects.get(sku="SHELF").on_hand


def test_a_group_is_claimed_and_recorded_in_two_statements_and_takes_effect_once_each(shelf):
    deliveries = [sent(Take(n=i)) for i in range(12)]

    with CaptureQueriesContext(connection) as queries:
        outcomes = shelf.handle_many(calls(*deliveries))

    assert [o.action for o in outcomes] == [ACK] * 12
    assert on_hand() == 88 and runs == list(range(12))
    # One transaction: 12 handler UPDATEs, one claim, one record of the successes
    # (one transaction per delivery would be 12 of each and 48 statements).
    assert transactions(queries) == (1, 14), [q["sql"][:80] for q in queries]
    ids = [envelope.id for envelope, _ in deliveries]
    assert Delivery.objects.filter(message_id__in=ids, status="succeeded", attempts=1).count() == 12
    assert set(Message.objects.filter(pk__in=ids).values_list("status", flat=True)) == {"handled"}
    log = Delivery.objects.get(message_id=ids[0]).attempt_log
    assert [entry["outcome"] for entry in log] == ["succeeded"]


def test_a_failure_rolls_its_group_back_is_recorded_once_and_the_others_take_effect_once(shelf):
    deliveries = [sent(Take(n=0)), sent(Take(n=1)), sent(Take(n=2, fail=True)), sent(Take(n=3)), sent(Take(n=4))]

    outcomes = shelf.handle_many(calls(*deliveries))

    assert [o.action for o in outcomes] == [ACK, ACK, RETRY, ACK, ACK]
    assert on_hand() == 96  # four effects, the failed one's rolled back
    # The failing handler ran once; the two before it ran again after the rollback.
    assert runs.count(2) == 1 and runs.count(0) == runs.count(1) == 2
    failed = Delivery.objects.get(message_id=deliveries[2][0].id)
    assert failed.status == "retrying" and "the shelf wobbled" in failed.error
    assert Delivery.objects.filter(status="succeeded").count() == 4


def test_a_lock_cycle_in_a_group_runs_that_delivery_alone_without_spending_an_attempt(shelf):
    # In a group, one transaction holds several handlers' row locks: a cycle with another
    # group is the group's doing, not the handler's (seen under the reliability run's backlog).
    deliveries = [sent(Take(n=0)), sent(Take(n=1, deadlock=True)), sent(Take(n=2))]

    outcomes = shelf.handle_many(calls(*deliveries))

    assert [o.action for o in outcomes] == [ACK, ACK, ACK]
    assert on_hand() == 97
    record = Delivery.objects.get(message_id=deliveries[1][0].id)
    assert (record.status, record.attempts, [e["outcome"] for e in record.attempt_log]) == (
        "succeeded",
        1,
        ["succeeded"],
    )


def test_a_message_already_handled_is_acknowledged_as_a_duplicate_without_its_effect(shelf):
    first = sent(TakeOnce(n=0))
    assert shelf.handle(*first, context="shelf").action == ACK
    again = (first[0].with_attempt(2), first[1])

    outcomes = shelf.handle_many(calls(sent(TakeOnce(n=1)), again, sent(TakeOnce(n=2))))

    assert [o.action for o in outcomes] == [ACK] * 3 and outcomes[1].duplicate
    assert on_hand() == 97 and sorted(runs) == [0, 1, 2]
    assert Delivery.objects.get(message_id=first[0].id).attempts == 1


def test_two_copies_of_one_message_in_one_group_take_effect_once(shelf):
    copy = sent(TakeOnce(n=7))

    outcomes = shelf.handle_many(calls(sent(TakeOnce(n=6)), copy, copy, sent(TakeOnce(n=8))))

    assert [o.action for o in outcomes] == [ACK] * 4
    assert outcomes[2].duplicate and not outcomes[1].duplicate
    assert on_hand() == 97 and runs.count(7) == 1


def test_poison_in_a_group_is_dead_lettered_with_a_reason_and_its_neighbours_succeed(shelf):
    good = [sent(Take(n=i)) for i in range(3)]
    undecodable = (Envelope.for_message(Take(n=9), qos=QoS.AT_LEAST_ONCE), b"{not json")
    forged = (good[1][0], codec.encode(Take(n=99)))  # the id of a stored message, another body

    outcomes = shelf.handle_many(calls(good[0], undecodable, good[1], forged, good[2]))

    assert [o.action for o in outcomes] == [ACK, DEAD, ACK, DEAD, ACK]
    assert "undecodable" in outcomes[1].reason and "forged message id" in outcomes[3].reason
    assert on_hand() == 97 and sorted(runs) == [0, 1, 2]


def test_a_delivery_the_worker_gave_up_on_is_not_started(shelf):
    deliveries = [sent(Take(n=i)) for i in range(4)]

    outcomes = shelf.handle_many(calls(*deliveries), wanted=lambda index: index != 2)

    assert outcomes[2] is None and [outcomes[i].action for i in (0, 1, 3)] == [ACK] * 3
    assert on_hand() == 97 and 2 not in runs
    assert not Delivery.objects.filter(message_id=deliveries[2][0].id).exists()


def test_without_history_at_least_once_deliveries_are_grouped_and_leave_no_rows(shelf, settings):
    settings.CATGA = {**settings.CATGA, "RECORD_HISTORY": False}
    deliveries = [sent(Take(n=i)) for i in range(5)]

    with CaptureQueriesContext(connection) as queries:
        outcomes = shelf.handle_many(calls(*deliveries))

    assert [o.action for o in outcomes] == [ACK] * 5 and on_hand() == 95
    assert transactions(queries) == (1, 5)  # the handlers' own statements, nothing of the inbox
    assert not Delivery.objects.exists()
