"""`manage.py prune_messages`: retention in batches, dead letters and their stories kept."""

import datetime as dt
import io
import re

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.mediator.core.ids import new_id
from apps.mediator.models import Delivery, Message

pytestmark = pytest.mark.django_db


def row(status, days_old, *, correlation_id=None, with_delivery=True):
    created = timezone.now() - dt.timedelta(days=days_old)
    message_id = new_id(int(created.timestamp() * 1000))
    message = Message.objects.create(
        id=message_id,
        type="orders.ConfirmOrder",
        kind="command",
        context="orders",
        correlation_id=correlation_id or message_id,
        qos="at_least_once",
        status=status,
        payload={"order_id": "x"},
        created_at=created,
    )
    if with_delivery:
        Delivery.objects.create(message=message, handler="orders:h", context="orders", status="succeeded", attempts=1)
    return message


def prune(*args):
    out = io.StringIO()
    call_command("prune_messages", *args, stdout=out)
    return out.getvalue()


def test_old_finished_messages_go_with_their_deliveries_and_everything_unresolved_stays():
    old_handled = [row("handled", 40) for _ in range(3)]
    old_published = row("published", 40, with_delivery=False)
    recent = row("handled", 5)
    dead = row("dead", 60)
    retrying = row("failed", 60)
    pending = row("pending", 60, with_delivery=False)

    output = prune("--days", "30")

    remaining = set(Message.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, dead.pk, retrying.pk, pending.pk}
    assert not Delivery.objects.filter(message_id__in=[m.pk for m in [*old_handled, old_published]]).exists()
    assert Delivery.objects.filter(message_id=dead.pk).exists()
    assert "Deleted 4 messages and 3 deliveries" in output
    assert "1 older dead letters kept until resolved" in output


def test_a_dead_letter_keeps_its_whole_conversation():
    root = row("handled", 50)
    cause = row("handled", 50, correlation_id=root.pk)
    dead = row("dead", 50, correlation_id=root.pk)
    unrelated = row("handled", 50)

    prune("--days", "30")

    assert set(Message.objects.values_list("pk", flat=True)) == {root.pk, cause.pk, dead.pk}
    assert not Message.objects.filter(pk=unrelated.pk).exists()


def test_it_deletes_in_batches_of_the_given_size_one_transaction_each():
    for _ in range(5):
        row("handled", 40)

    with CaptureQueriesContext(connection) as queries:
        output = prune("--days", "30", "--batch-size", "2")

    assert "Deleted 5 messages and 5 deliveries" in output and "in 3 batches" in output
    deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE") and "rate" not in q["sql"]]
    assert len(deletes) == 6  # deliveries then messages, per batch
    for sql in deletes:
        assert 1 <= len(re.findall(r"'[0-9A-Z]{26}'|%s|\?", sql.split(" IN ", 1)[1])) <= 2
    savepoints = [q for q in queries.captured_queries if q["sql"].startswith("SAVEPOINT")]
    assert len(savepoints) == 3  # one transaction (here nested in the test's: a savepoint) per batch
    assert not any('"payload"' in q["sql"] for q in queries.captured_queries)
    assert not Message.objects.exists()


def test_dry_run_counts_and_deletes_nothing():
    for _ in range(3):
        row("handled", 40)
    row("dead", 40)

    output = prune("--days", "30", "--dry-run")

    assert "Would delete 3 messages" in output and "1 older dead letters kept" in output
    assert Message.objects.count() == 4


@override_settings(CATGA={"HISTORY_RETENTION_DAYS": 7})
def test_the_retention_setting_is_the_default():
    eight_days = row("handled", 8)
    six_days = row("handled", 6)

    prune()

    assert list(Message.objects.values_list("pk", flat=True)) == [six_days.pk]
    assert not Message.objects.filter(pk=eight_days.pk).exists()


@override_settings(CATGA={"HISTORY_RETENTION_DAYS": None})
def test_retention_off_needs_explicit_days():
    row("handled", 400)
    with pytest.raises(CommandError, match="Retention is off"):
        prune()
    assert Message.objects.count() == 1


@pytest.mark.parametrize(("args", "message"), [(["--days", "-1"], "--days"), (["--batch-size", "0"], "--batch-size")])
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(CommandError, match=message):
        prune(*args)
