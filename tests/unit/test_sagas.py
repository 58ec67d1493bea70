"""The order saga and the workflow primitives, in one process over the in-memory transport."""

import time

import pytest
from django.db import OperationalError, transaction

from apps.inventory.contracts import ReleaseStock, ReserveStock, StockLine, StockReserved
from apps.inventory.models import Item, Reservation
from apps.mediator import WorkflowFailed, chain, group
from apps.mediator.models import Delivery, Message, SagaState, Workflow
from apps.mediator.runtime import get_mediator
from apps.mediator.storage import outage
from apps.orders.models import Order
from apps.payments.models import Payment

pytestmark = pytest.mark.django_db(transaction=True)


def place(api, token="tok_visa", sku="SKU-A", quantity=2):
    body = {"customer_id": "c1", "lines": [{"sku": sku, "quantity": quantity}], "payment_token": token}
    response = api.post("/api/orders/", body, format="json")
    assert response.status_code == 202
    return response.json()["id"]


def saga_of(api, order_id):
    return api.get(f"/api/orders/{order_id}/").json()["saga"]


def events(saga):
    return [(e["name"], e["event"]) for e in saga["log"]]


def test_a_happy_order_walks_every_step_and_shows_its_log(api, catalogue):
    saga = saga_of(api, place(api))

    assert saga["status"] == "completed"
    assert events(saga) == [
        ("reserve_stock", "started"),
        ("reserve_stock", "completed"),
        ("charge_payment", "started"),
        ("charge_payment", "completed"),
        ("confirm_order", "started"),
        ("confirm_order", "completed"),
    ]
    assert all(e["message_id"] for e in saga["log"])
    assert [e["after_ms"] for e in saga["log"]] == sorted(e["after_ms"] for e in saga["log"])


def test_out_of_stock_fails_the_first_step_with_nothing_to_undo(api, catalogue):
    order_id = place(api, sku="SKU-RARE", quantity=5)
    saga = saga_of(api, order_id)

    assert (saga["status"], saga["reason"]) == ("failed", "out_of_stock")
    assert ("reserve_stock", "failed") in events(saga)
    assert not any(event == "compensating" for _, event in events(saga))
    assert Order.objects.get(pk=order_id).reason == "out_of_stock"


def test_a_declined_payment_releases_the_stock_then_cancels(api, catalogue):
    order_id = place(api, token="tok_declined")
    saga = saga_of(api, order_id)

    assert (saga["status"], saga["reason"]) == ("failed", "payment_declined")
    assert events(saga)[-2:] == [("charge_payment", "failed"), ("reserve_stock", "compensating")]
    assert Reservation.objects.get(order_id=order_id).status == "released"
    assert Item.objects.get(sku="SKU-A").reserved == 0
    assert Order.objects.get(pk=order_id).status == "cancelled"


def test_a_stalled_payment_step_times_out_compensates_and_cancels(
    api, catalogue, monkeypatch, settings, catga_messages, catga_run_scheduled
):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # the charge never succeeds
    order_id = place(api)
    assert Order.objects.get(pk=order_id).status == "pending"
    assert [type(c).__name__ for c in catga_messages.sent] == ["ReserveStock", "ChargePayment"]

    # Nothing is due yet; then the clock passes the step timeout.
    assert catga_run_scheduled() == 0
    assert catga_run_scheduled(settings.ORDER_STEP_TIMEOUT + 1) > 0
    assert [m.order_id for m in catga_messages.of_type(ReleaseStock)] == [order_id]  # the compensation

    order = Order.objects.get(pk=order_id)
    assert (order.status, order.reason) == ("cancelled", "timeout")
    saga = saga_of(api, order_id)
    assert ("charge_payment", "timed_out") in events(saga)
    assert Item.objects.get(sku="SKU-A").reserved == 0
    # The reserve step's deadline went when it settled: it never times out.
    assert events(saga).count(("reserve_stock", "timed_out")) == 0


def test_a_step_timer_is_a_deadline_on_the_saga_and_only_one_that_passes_writes_a_timeout(
    api, catalogue, monkeypatch, settings, catga_run_scheduled
):
    """Each settled step used to insert and delete a scheduled Timeout in the history (issue 16)."""
    timeouts = Message.objects.filter(type="orders.OrderSagaTimeout")
    settled = SagaState.objects.get(correlation_id=Order.objects.get(pk=place(api)).correlation_id)
    assert (settled.status, settled.deadline) == ("completed", None)

    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # the charge never succeeds
    before = time.time()
    stalled = SagaState.objects.get(correlation_id=Order.objects.get(pk=place(api)).correlation_id)
    assert stalled.current_step == 1
    assert (
        before + settings.ORDER_STEP_TIMEOUT
        <= stalled.deadline.timestamp()
        <= time.time() + settings.ORDER_STEP_TIMEOUT
    )
    assert not timeouts.exists()  # three steps started, no timer in the history

    assert catga_run_scheduled(settings.ORDER_STEP_TIMEOUT + 1) == 1
    assert catga_run_scheduled(settings.ORDER_STEP_TIMEOUT + 1) == 0  # fired once, its deadline cleared
    timeout = timeouts.get()
    assert (timeout.status, timeout.correlation_id) == ("handled", stalled.correlation_id)
    stalled.refresh_from_db()
    assert (stalled.status, stalled.reason, stalled.deadline) == ("failed", "timeout", None)


def test_a_step_whose_window_saw_the_database_away_is_given_its_time_again(
    api, catalogue, monkeypatch, settings, catga_messages, catga_run_scheduled
):
    """A punctual timer after an outage used to cancel orders whose step had no time to run."""
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # the charge never succeeds
    order_id = place(api)
    # This process finds PostgreSQL away while the charge step waits (what a consumer's
    # failed delivery or gauge refresh does in an outage).
    assert outage.unavailable(OperationalError("connection refused"))

    assert catga_run_scheduled(settings.ORDER_STEP_TIMEOUT + 1) > 0
    assert Order.objects.get(pk=order_id).status == "pending"
    saga = saga_of(api, order_id)
    assert ("charge_payment", "timer_rearmed") in events(saga)
    assert "the database was away" in next(e["detail"] for e in saga["log"] if e["event"] == "timer_rearmed")

    # The re-armed window saw no outage: this time the step times out as usual.
    assert catga_run_scheduled(2 * settings.ORDER_STEP_TIMEOUT + 2) > 0
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.reason) == ("cancelled", "timeout")


def test_a_step_whose_command_waits_behind_a_backlog_is_given_its_time_again(
    api, catalogue, monkeypatch, settings, catga_run_scheduled
):
    """A burst after an outage queued more orders than the consumers could reserve within a
    step timeout: punctual timers cancelled a thousand orders whose commands never ran."""
    place(api)  # a charge handled moments ago: the payments stream is flowing
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # this order's charge never succeeds
    order_id = place(api)
    charge = Message.objects.filter(type="payments.ChargePayment").latest("id")
    # As the history stands while the command waits in its stream: published, never handled.
    Delivery.objects.filter(message=charge).delete()
    Message.objects.filter(pk=charge.pk).update(status="published")

    assert catga_run_scheduled(settings.ORDER_STEP_TIMEOUT + 1) == 1
    assert Order.objects.get(pk=order_id).status == "pending"
    rearmed = [e for e in saga_of(api, order_id)["log"] if e["event"] == "timer_rearmed"]
    assert [(e["name"], e["message_id"]) for e in rearmed] == [("charge_payment", charge.pk)]
    assert "its command is still waiting to be handled" in rearmed[0]["detail"]

    # Handled by the next deadline, its reply still queued behind the backlog: again.
    Message.objects.filter(pk=charge.pk).update(status="handled")
    assert catga_run_scheduled(2 * settings.ORDER_STEP_TIMEOUT + 2) == 1
    assert Order.objects.get(pk=order_id).status == "pending"
    last = [e for e in saga_of(api, order_id)["log"] if e["event"] == "timer_rearmed"][-1]
    assert "the reply is still on its way" in last["detail"]

    # Failed for good by the one after: the step times out.
    Message.objects.filter(pk=charge.pk).update(status="dead")
    assert catga_run_scheduled(3 * settings.ORDER_STEP_TIMEOUT + 3) > 0
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.reason) == ("cancelled", "timeout")


def test_a_charge_that_succeeds_after_the_timeout_is_refunded(api, catalogue, monkeypatch, settings):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    order_id = place(api)
    get_mediator().transport.run_due(now=time.time() + settings.ORDER_STEP_TIMEOUT + 1)
    monkeypatch.delenv("FAKE_PROVIDER_OUTAGE")

    from apps.mediator.storage import replay

    dead = replay.dead_messages(type="payments.ChargePayment").get()
    replay.replay([dead.id], actor="test", publish=get_mediator().transport.publish)

    assert list(Payment.objects.filter(order_id=order_id).values_list("status", flat=True)) == ["refunded"]
    assert ("charge_payment", "late_reply_compensated") in events(saga_of(api, order_id))
    assert Order.objects.get(pk=order_id).status == "cancelled"


def test_cancel_during_the_payment_step_compensates_and_a_final_order_refuses(api, catalogue, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    order_id = place(api)
    response = api.post(f"/api/orders/{order_id}/cancel/")

    assert response.status_code == 202
    order = Order.objects.get(pk=order_id)
    assert (order.status, order.reason) == ("cancelled", "cancelled")
    assert SagaState.objects.get(correlation_id=order.correlation_id).status == "cancelled"
    assert Item.objects.get(sku="SKU-A").reserved == 0
    again = api.post(f"/api/orders/{order_id}/cancel/")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]

    monkeypatch.delenv("FAKE_PROVIDER_OUTAGE")
    confirmed = place(api)
    assert api.post(f"/api/orders/{confirmed}/cancel/").status_code == 409
    assert api.post("/api/orders/01ZZZZZZZZZZZZZZZZZZZZZZZZ/cancel/").status_code == 404


def test_a_reply_delivered_again_does_not_advance_the_saga_twice(api, catalogue):
    order_id = place(api)
    order = Order.objects.get(pk=order_id)
    charges = Message.objects.filter(type="payments.ChargePayment", correlation_id=order.correlation_id).count()

    # Inventory says "reserved" a second time (a new message of the same conversation).
    import msgspec

    from apps.mediator.core.envelope import Envelope
    from apps.mediator.core.messages import QoS
    from apps.mediator.core.ports import Outgoing

    reply = StockReserved(order_id=order_id)
    first = Message.objects.get(type="inventory.StockReserved", correlation_id=order.correlation_id)
    copy = Envelope.for_message(reply, qos=QoS.AT_LEAST_ONCE, correlation_id=order.correlation_id)
    get_mediator().transport.publish([Outgoing(copy, msgspec.json.encode(reply))])

    assert Message.objects.filter(type="payments.ChargePayment", correlation_id=order.correlation_id).count() == charges
    saga = saga_of(api, order_id)
    assert events(saga).count(("charge_payment", "started")) == 1
    assert ("reserve_stock", "ignored_reply") in events(saga)
    assert first.id != copy.id


def test_a_chain_runs_in_order_and_stops_at_the_first_failure(db, catalogue):
    ok = chain(
        ReserveStock(order_id="w1", lines=(StockLine(sku="SKU-A", quantity=1),)),
        ReserveStock(order_id="w2", lines=(StockLine(sku="SKU-B", quantity=1),)),
        ReleaseStock(order_id="w1"),
    )
    assert ok.wait(timeout=5) == [None, None, None]
    assert ok.status() == "succeeded"
    assert Reservation.objects.get(order_id="w1").status == "released"

    Reservation.objects.create(order_id="gone", lines=[], status="released")
    bad = chain(
        ReserveStock(order_id="gone", lines=(StockLine(sku="SKU-A", quantity=1),)),
        ReleaseStock(order_id="never-sent"),
    )
    with pytest.raises(WorkflowFailed, match="member 0 .*Conflict: reservation for order gone"):
        bad.wait(timeout=5)
    assert not Message.objects.filter(payload__order_id="never-sent").exists()


def test_a_group_fans_out_and_fires_its_callback_once_when_all_are_done(db, catalogue):
    with transaction.atomic():
        handle = group(
            [ReserveStock(order_id=f"g{i}", lines=(StockLine(sku="SKU-A", quantity=1),)) for i in range(10)],
            callback=ReleaseStock(order_id="g0"),
        )
    assert handle.wait(timeout=5) == [None] * 10
    row = Workflow.objects.get(pk=handle.id)
    assert (row.remaining, row.status) == (0, "succeeded")
    assert Reservation.objects.get(order_id="g0").status == "released"
    assert Item.objects.get(sku="SKU-A").reserved == 9
    # One conversation: ten members and the callback, plus the events they caused.
    assert Message.objects.filter(correlation_id=row.correlation_id, kind="command").count() == 11


def test_a_replay_that_lost_the_race_to_another_is_skipped_not_repeated(api, catalogue, monkeypatch):
    from apps.mediator.storage import replay

    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    place(api)
    monkeypatch.delenv("FAKE_PROVIDER_OUTAGE")
    dead = replay.dead_messages(type="payments.ChargePayment").get()

    first = replay.replay([dead.id], actor="admin:alice", only_dead=True, publish=get_mediator().transport.publish)
    second = replay.replay(
        [dead.id], actor="admin:bob", only_dead=True, publish=get_mediator().transport.publish
    )  # confirmed a moment later

    assert first[0].ok and not second[0].ok
    assert "no longer a dead letter" in second[0].detail
    dead.refresh_from_db()
    assert [r["by"] for r in dead.headers["replays"]] == ["admin:alice"]
