"""Revoke, expire and purge (issue 18), with a queue that holds what was published until a test
delivers it: so a message can be revoked while it is queued, as on NATS before a consumer runs."""

import datetime as dt
import io
import sys
import threading
import time
from collections.abc import Sequence
from types import SimpleNamespace

import msgspec
import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from apps.mediator.core.envelope import H_EXPIRES, Envelope
from apps.mediator.core.messages import Command, Event, QoS
from apps.mediator.core.pipeline import Pipeline
from apps.mediator.core.ports import Outgoing, Transport
from apps.mediator.core.registry import Registry
from apps.mediator.delivery.dispatcher import Dispatcher
from apps.mediator.delivery.mediator import HandlerFailed, Mediator
from apps.mediator.delivery.outcome import ACK
from apps.mediator.models import Delivery, Message
from apps.mediator.storage import history, outbox, revoke

pytestmark = pytest.mark.django_db(transaction=True)


class Bake(Command):
    loaf: str

    class Meta:
        context = "bakery"


class BakeOnce(Command):
    loaf: str

    class Meta:
        context = "bakery"
        qos = QoS.EXACTLY_ONCE


class Baked(Event):
    loaf: str

    class Meta:
        context = "bakery"


baked: list[str] = []
gate = SimpleNamespace(started=threading.Event(), release=threading.Event(), hold=False)


def bake(message, ctx):
    if gate.hold:
        gate.started.set()
        gate.release.wait(10)
    baked.append(message.loaf)


class Queue(Transport):
    """Publishing marks the rows published and queues them; `deliver` hands them to the dispatcher."""

    label = "queue"

    def __init__(self, dispatcher):
        super().__init__(dispatcher)
        self.queued: list[Outgoing] = []

    def publish(self, batch: Sequence[Outgoing]) -> None:
        due = [o for o in batch if o.envelope.not_before is None or o.envelope.not_before <= time.time()]
        if due:
            self.publish_blocking(due)

    def publish_blocking(self, batch: Sequence[Outgoing]) -> list[str]:
        history.mark_published([o.envelope.id for o in batch])
        self.queued.extend(batch)
        return [o.envelope.id for o in batch]

    def probe(self, timeout: float) -> list[str]:
        return []

    def deliver(self, *, together: bool = False, **changes):
        items, self.queued = self.queued, []
        envelopes = [msgspec.structs.replace(o.envelope, **changes) for o in items]
        if together:  # one hand-off: the group commit's path
            return self.dispatcher.handle_many([((e, o.body), {}) for e, o in zip(envelopes, items, strict=True)])
        return [self.dispatcher.handle(e, o.body) for e, o in zip(envelopes, items, strict=True)]


@pytest.fixture
def bakery():
    baked.clear()
    gate.hold = False
    gate.started.clear()
    gate.release.clear()
    registry = Registry.from_maps(
        {"bakery": SimpleNamespace(COMMANDS={Bake: bake, BakeOnce: bake}, EVENTS={Baked: [bake]})}
    )
    dispatcher = Dispatcher(registry, Pipeline([]))
    return Mediator(registry, dispatcher, Queue(dispatcher))


def send(mediator, *messages, **options):
    with transaction.atomic():
        return [
            mediator.send(m, **options) if isinstance(m, Command) else mediator.publish(m, **options) for m in messages
        ]


def row(handle) -> Message:
    return Message.objects.get(pk=handle.message_id)


# -- revoke ----------------------------------------------------------------------------


def test_a_scheduled_message_revoked_before_it_is_due_is_never_published_or_handled(bakery):
    (handle,) = send(bakery, Bake(loaf="rye"), countdown=60)
    assert handle.status() == "pending"

    out = io.StringIO()
    call_command("revoke", handle.message_id, "--reason", "customer cancelled", stdout=out)

    assert "revoked (was scheduled for" in out.getvalue()
    published = []
    assert (
        outbox.sweep(lambda batch: published.extend(batch) or [], now=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1))
        == 0
    )
    assert published == [] and bakery.transport.queued == [] and baked == []
    stored = row(handle)
    assert stored.status == "revoked"
    assert stored.headers["revoked"]["by"] == "manage.py revoke"
    assert stored.headers["revoked"]["reason"] == "customer cancelled"
    assert stored.headers["revoked"]["was"] == "pending"
    with pytest.raises(HandlerFailed, match="revoked"):
        handle.wait(timeout=1)


@pytest.mark.parametrize("together", [False, True], ids=["one", "group-commit"])
def test_a_queued_message_revoked_before_a_consumer_takes_it_is_acknowledged_unrun(bakery, together):
    first, second = send(bakery, Bake(loaf="spelt"), Bake(loaf="wheat"))
    assert first.status() == "published" and len(bakery.transport.queued) == 2

    revoke.revoke([first.message_id], actor="test")
    outcomes = bakery.transport.deliver(together=together)

    assert [o.action for o in outcomes] == [ACK, ACK]  # settled, neither retried nor dead-lettered
    assert baked == ["wheat"]
    assert first.status() == "revoked" and second.status() == "handled"
    assert not Delivery.objects.filter(message_id=first.message_id).exists()


def test_the_dispatch_check_holds_inside_the_handlers_transaction(bakery, monkeypatch):
    """Revoked after the pre-check read the row but before the claim: the locked read sees it."""
    (handle,) = send(bakery, Bake(loaf="oat"))
    real = history.ensure_received

    def stale_read(envelope, payload, **kwargs):
        stored, created = real(envelope, payload, **kwargs)
        revoke.revoke([envelope.id], actor="racer")  # commits between the two reads
        return stored, created

    monkeypatch.setattr(history, "ensure_received", stale_read)
    (outcome,) = bakery.transport.deliver()

    assert outcome.action == ACK and baked == []
    assert handle.status() == "revoked"


def test_an_event_revoked_while_queued_runs_none_of_its_handlers(bakery):
    (handle,) = send(bakery, Baked(loaf="brioche"))
    call_command("revoke", handle.message_id, stdout=io.StringIO())
    assert [o.action for o in bakery.transport.deliver()] == [ACK]
    assert baked == [] and handle.status() == "revoked"


def test_revoking_what_was_handled_says_so_and_changes_nothing(bakery):
    (handle,) = send(bakery, Bake(loaf="sourdough"))
    bakery.transport.deliver()
    before = row(handle)

    with pytest.raises(CommandError, match="not revoked.*already handled"):
        call_command("revoke", handle.message_id, stdout=io.StringIO())
    with pytest.raises(CommandError, match="no such message"):
        call_command("revoke", "01HZZZZZZZZZZZZZZZZZZZZZZZ", stdout=io.StringIO())

    after = row(handle)
    assert (after.status, after.headers) == (before.status, before.headers) == ("handled", before.headers)
    assert "revoked" not in after.headers


def fail_once(envelope, error):
    with transaction.atomic():
        history.record_delivery_failure(
            envelope, "bakery:bake", "bakery", status="retrying", started=dt.datetime.now(dt.UTC), error=error, tb=""
        )


def test_a_retrying_message_can_be_revoked_and_its_retry_is_not_run(bakery):
    (handle,) = send(bakery, Bake(loaf="rye"))
    item = bakery.transport.queued[0]
    fail_once(item.envelope, "x")
    assert handle.status() == "failed"

    (result,) = revoke.revoke([handle.message_id], actor="test")
    assert result.ok and "waiting for a retry" in result.detail
    bakery.transport.deliver(attempt=2)
    assert baked == [] and handle.status() == "revoked"
    # A failure recorded late (the run that failed just before) does not reopen it.
    fail_once(item.envelope, "y")
    assert handle.status() == "revoked"


def test_a_revoke_waits_for_a_handler_that_is_running_and_then_refuses(bakery, monkeypatch):
    monkeypatch.setattr(revoke, "LOCK_TIMEOUT", "300ms")
    (handle,) = send(bakery, BakeOnce(loaf="rye"))
    gate.hold = True
    worker = threading.Thread(target=lambda: (bakery.transport.deliver(), connection.close()))
    worker.start()
    assert gate.started.wait(10)

    (busy,) = revoke.revoke([handle.message_id], actor="test")  # the handler holds the row
    gate.release.set()
    worker.join(10)
    (late,) = revoke.revoke([handle.message_id], actor="test")

    assert not busy.ok and "being handled right now" in busy.detail
    assert not late.ok and "already handled" in late.detail
    assert baked == ["rye"] and handle.status() == "handled"


def test_with_history_off_only_a_scheduled_message_is_revocable(bakery, settings):
    settings.CATGA = {**settings.CATGA, "RECORD_HISTORY": False}
    scheduled, queued = send(bakery, Bake(loaf="a"), countdown=60)[0], send(bakery, BakeOnce(loaf="b"))[0]
    plain_pending = Envelope.for_message(Bake(loaf="c"), qos=QoS.AT_LEAST_ONCE)
    history.store_outgoing(plain_pending, {"loaf": "c"})  # due, not yet published: its consumer checks nothing

    results = {
        r.message_id: r for r in revoke.revoke([scheduled.message_id, queued.message_id, plain_pending.id], actor="t")
    }

    assert results[scheduled.message_id].ok
    assert results[queued.message_id].ok  # exactly-once keeps its row: the consumer reads it
    assert not results[plain_pending.id].ok and "RECORD_HISTORY off" in results[plain_pending.id].detail


# -- expire -----------------------------------------------------------------------------


def test_an_expired_message_is_recorded_expired_and_not_handled(bakery):
    (handle,) = send(bakery, Bake(loaf="baguette"), expires=30)
    assert row(handle).expires_at is not None

    (outcome,) = bakery.transport.deliver(expires=time.time() - 1)  # as if it waited 30 s in the queue

    assert outcome.action == ACK and baked == []
    assert handle.status() == "expired"
    with pytest.raises(HandlerFailed, match="expired"):
        handle.wait(timeout=1)


def test_an_unexpired_message_is_handled_and_its_expiry_travels_in_a_header(bakery):
    (handle,) = send(bakery, Baked(loaf="bun"), expires=dt.timedelta(minutes=5))
    item = bakery.transport.queued[0]
    headers = item.headers()
    assert float(headers[H_EXPIRES]) == pytest.approx(time.time() + 300, abs=5)
    assert Envelope.from_headers(headers).expires == item.envelope.expires

    bakery.transport.deliver()
    assert baked == ["bun"] and handle.status() == "handled"


def test_the_relay_marks_an_expired_outbox_row_expired_instead_of_publishing_it(bakery):
    (late,) = send(bakery, Bake(loaf="stale"), countdown=10, expires=20)
    (fresh,) = send(bakery, Bake(loaf="fresh"), countdown=10)
    published = []

    def publish(batch):
        published.extend(o.envelope.id for o in batch)
        return [o.envelope.id for o in batch]

    outbox.sweep(publish, now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60))

    assert published == [fresh.message_id]
    assert late.status() == "expired" and fresh.status() == "published"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"expires": -5}, ValueError, "expires must be a positive number of seconds"),
        ({"expires": 0}, ValueError, "expires must be a positive"),
        ({"expires": float("nan")}, ValueError, "expires must be a positive"),
        ({"expires": dt.datetime(2001, 1, 1, tzinfo=dt.UTC)}, ValueError, "expires=2001-01-01.* is in the past"),
        ({"expires": 10, "countdown": 20}, ValueError, "expires must be after the message is due"),
        ({"expires": True}, TypeError, "expires takes seconds"),
        ({"expires": "soon"}, TypeError, "expires takes seconds"),
    ],
)
def test_bad_expiries_are_refused_naming_the_argument(bakery, options, error, match):
    with pytest.raises(error, match=match), transaction.atomic():
        bakery.send(Bake(loaf="x"), **options)
    assert not Message.objects.exists()


def test_publish_validates_its_expiry_too(bakery):
    with pytest.raises(ValueError, match="expires"), transaction.atomic():
        bakery.publish(Baked(loaf="x"), expires=-1)


# -- purge ------------------------------------------------------------------------------


def test_purge_drops_the_contexts_waiting_messages_of_a_type_and_records_the_purge(bakery):
    (done,) = send(bakery, Bake(loaf="0"))
    bakery.transport.deliver()
    queued = send(bakery, Bake(loaf="1"), Bake(loaf="2"))
    (scheduled,) = send(bakery, Bake(loaf="3"), countdown=60)
    (other_type,) = send(bakery, BakeOnce(loaf="4"))

    out = io.StringIO()
    call_command("purge", "--context", "bakery", "--type", "bakery.Bake", "--yes", "--reason", "oven broke", stdout=out)

    dropped = {h.message_id for h in [*queued, scheduled]}
    assert "3 bakery messages of type bakery.Bake dropped by manage.py purge" in out.getvalue()
    rows = {m.pk: m for m in Message.objects.all()}
    assert {pk for pk, m in rows.items() if m.status == "revoked"} == dropped
    records = [rows[pk].headers["revoked"] for pk in dropped]
    assert len({r["purge"] for r in records}) == 1
    assert all(r["count"] == 3 and r["by"] == "manage.py purge" and r["reason"] == "oven broke" for r in records)
    assert rows[done.message_id].status == "handled" and rows[other_type.message_id].status == "published"

    bakery.transport.deliver()  # the queued ones arrive: skipped; the other type runs
    assert baked == ["0", "4"]


def test_purge_asks_first_and_refuses_without_a_terminal(bakery, monkeypatch):
    (handle,) = send(bakery, Bake(loaf="1"))
    with pytest.raises(CommandError, match="not a terminal, pass --yes"):
        call_command("purge", "--context", "bakery", stdout=io.StringIO())
    assert handle.status() == "published"

    monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr("builtins.input", lambda prompt: "n")
    with pytest.raises(CommandError, match="cancelled"):
        call_command("purge", "--context", "bakery", stdout=io.StringIO())
    assert handle.status() == "published"

    monkeypatch.setattr("builtins.input", lambda prompt: "y")
    call_command("purge", "--context", "bakery", stdout=io.StringIO())
    assert handle.status() == "revoked"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--context", "nowhere", "--yes"], "--context 'nowhere' is not a context"),
        (["--context", "bakery", "--type", "bakery.Nope", "--yes"], "--type 'bakery.Nope' is not a message type"),
        (["--context", "orders", "--type", "bakery.Bake", "--yes"], "--type bakery.Bake belongs to bakery"),
    ],
)
def test_purge_refuses_bad_options_naming_them(bakery, argv, match):
    with pytest.raises(CommandError, match=match):
        call_command("purge", *argv, stdout=io.StringIO())


# -- chains and groups -----------------------------------------------------------------


@pytest.fixture
def bakery_with_workflows(bakery):
    from apps.mediator.orchestration import workflows

    bakery.dispatcher.workflows = workflows
    return bakery


def test_a_chain_whose_queued_member_is_revoked_fails_and_sends_nothing_after_it(bakery_with_workflows):
    from apps.mediator.orchestration.workflows import WorkflowFailed, chain

    mediator = bakery_with_workflows
    handle = chain(Bake(loaf="a"), Bake(loaf="b"), mediator=mediator)
    (first,) = mediator.transport.queued
    call_command("revoke", first.envelope.id, stdout=io.StringIO())
    with pytest.raises(WorkflowFailed, match="member 0 .* revoked: it will not be handled"):
        handle.wait(timeout=1)
    mediator.transport.deliver()  # the revoked member reaches a consumer: settled unrun
    assert baked == [] and mediator.transport.queued == []


def test_a_group_member_expired_at_dispatch_fails_the_group(bakery_with_workflows):
    from apps.mediator.orchestration.workflows import WorkflowFailed, group

    mediator = bakery_with_workflows
    handle = group([Bake(loaf="a"), Bake(loaf="b")], mediator=mediator)
    mediator.transport.deliver(expires=time.time() - 1)
    with pytest.raises(WorkflowFailed, match="expired: it will not be handled"):
        handle.wait(timeout=1)
    assert baked == []


def test_a_purged_group_member_fails_the_group(bakery_with_workflows):
    from apps.mediator.orchestration.workflows import WorkflowFailed, group

    mediator = bakery_with_workflows
    handle = group([Bake(loaf="a")], mediator=mediator)
    call_command("purge", "--context", "bakery", "--yes", stdout=io.StringIO())
    with pytest.raises(WorkflowFailed, match="purged: it will not be handled"):
        handle.wait(timeout=1)
