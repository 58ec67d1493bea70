"""The order saga and chains/groups across worker processes over real NATS."""

import signal

import msgspec
import pytest
from django.db import transaction

from apps.inventory.contracts import ReleaseStock, ReserveStock, StockLine, StockReserved
from apps.inventory.models import Item, Reservation
from apps.mediator import WorkflowFailed, chain, group
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import QoS
from apps.mediator.models import Message, SagaState
from apps.mediator.servers.ports import wait_until
from apps.orders.models import Order
from apps.payments.models import Payment
from tests.integration.helpers import CONTEXTS, all_final, assert_consistent, final_status, js_call, place

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def saga(order):
    return SagaState.objects.get(correlation_id=order.correlation_id)


def test_saga_happy_out_of_stock_and_declined_with_their_step_logs(api, catalogue, workers):
    for context in CONTEXTS:
        workers.start(context)
    happy = final_status(place(api, [{"sku": "SKU-A", "quantity": 1}]))
    short = final_status(place(api, [{"sku": "SKU-RARE", "quantity": 9}]))
    declined = final_status(place(api, [{"sku": "SKU-B", "quantity": 1}], token="tok_declined"))

    assert saga(happy).status == "completed"
    assert [(e["name"], e["event"]) for e in saga(happy).step_log if e["event"] == "completed"] == [
        ("reserve_stock", "completed"),
        ("charge_payment", "completed"),
        ("confirm_order", "completed"),
    ]
    assert (saga(short).status, saga(short).reason) == ("failed", "out_of_stock")
    assert (saga(declined).status, saga(declined).reason) == ("failed", "payment_declined")
    body = api.get(f"/api/orders/{declined.id}/").json()
    assert body["saga"]["log"][-1]["event"] == "compensating"
    wait_until(lambda: Item.objects.get(sku="SKU-B").reserved == 0, what="the declined order's stock released")


def test_a_stalled_payment_times_out_compensates_cancels_and_refunds_the_late_capture(
    api, catalogue, workers, settings
):
    settings.ORDER_STEP_TIMEOUT = 2  # the web schedules the first step's timeout
    workers.start("orders", ORDER_STEP_TIMEOUT="2")
    workers.start("inventory")
    workers.start("payments", FAKE_PROVIDER_DELAY="5")
    order = final_status(place(api, [{"sku": "SKU-A", "quantity": 2}]), timeout=30)

    assert (order.status, order.reason) == ("cancelled", "timeout")
    assert ("charge_payment", "timed_out") in [(e["name"], e["event"]) for e in saga(order).step_log]
    wait_until(lambda: Item.objects.get(sku="SKU-A").reserved == 0, what="stock released by compensation")
    # The provider answers at last; the saga undoes the capture it no longer wants.
    wait_until(
        lambda: Payment.objects.filter(order_id=order.id, status="refunded").exists(),
        timeout=30,
        what="the late capture refunded",
    )
    assert Item.objects.get(sku="SKU-A").on_hand == 10


def test_a_saga_resumes_after_its_worker_is_killed_mid_flight(api, big_catalogue, workers):
    orders_worker = workers.start("orders")
    workers.start("inventory")
    workers.start("payments")
    ids = [place(api, [{"sku": "SKU-X", "quantity": 1}]) for _ in range(30)]
    wait_until(lambda: Order.objects.filter(status="confirmed").count() >= 3, what="some orders through")
    orders_worker.send_signal(signal.SIGKILL)
    orders_worker.wait()
    assert Order.objects.filter(status="pending").exists(), "the kill must land mid-flight"
    workers.start("orders", CATGA_ACK_WAIT="5")

    orders = all_final(ids)
    assert all(o.status == "confirmed" for o in orders)
    assert all(saga(o).status == "completed" for o in orders)
    assert_consistent(orders, big_catalogue)


def test_a_reply_delivered_twice_advances_the_saga_once(api, catalogue, workers):
    for context in CONTEXTS:
        workers.start(context)
    order = final_status(place(api, [{"sku": "SKU-A", "quantity": 1}]))
    reply = StockReserved(order_id=order.id)
    copy = Envelope.for_message(reply, qos=QoS.AT_LEAST_ONCE, correlation_id=order.correlation_id)

    original = Message.objects.get(type="inventory.StockReserved", correlation_id=order.correlation_id)

    async def redeliver(nc, js):
        headers = copy.to_headers()
        await js.publish("catga.inventory.evt.StockReserved", msgspec.json.encode(reply), headers=headers)
        # and the very same message again, past the duplicate window's key
        same = {**headers, "Catga-Message-Id": original.id, "Nats-Msg-Id": original.id + ".again"}
        await js.publish("catga.inventory.evt.StockReserved", msgspec.json.encode(reply), headers=same)

    js_call(workers.nats_url, redeliver)
    wait_until(
        lambda: any(e["event"] == "ignored_reply" for e in saga(order).step_log),
        what="the saga to see the second reply",
    )
    assert Message.objects.filter(type="payments.ChargePayment", correlation_id=order.correlation_id).count() == 1
    assert Payment.objects.filter(order_id=order.id).count() == 1


def test_cancel_during_the_payment_step(api, catalogue, workers):
    workers.start("orders")
    workers.start("inventory")
    workers.start("payments", FAKE_PROVIDER_DELAY="3")
    order_id = place(api, [{"sku": "SKU-A", "quantity": 3}])
    wait_until(
        lambda: Message.objects.filter(type="payments.ChargePayment", payload__order_id=order_id).exists(),
        what="the payment step to start",
    )

    assert api.post(f"/api/orders/{order_id}/cancel/").status_code == 202
    order = final_status(order_id)
    assert (order.status, order.reason) == ("cancelled", "cancelled")
    assert saga(order).status == "cancelled"
    wait_until(
        lambda: Payment.objects.filter(order_id=order_id, status="refunded").exists(),
        timeout=30,
        what="the capture that landed after the cancel refunded",
    )
    wait_until(lambda: Item.objects.get(sku="SKU-A").reserved == 0, what="stock released")
    assert Item.objects.get(sku="SKU-A").on_hand == 10


def test_a_chain_and_a_group_across_two_worker_processes_and_a_failing_chain(nats_settings, catalogue, workers):
    workers.start("inventory")
    workers.start("inventory")
    with transaction.atomic():
        chained = chain(
            ReserveStock(order_id="c1", lines=(StockLine(sku="SKU-A", quantity=1),)),
            ReserveStock(order_id="c2", lines=(StockLine(sku="SKU-B", quantity=1),)),
            ReleaseStock(order_id="c1"),
        )
        fanned = group(
            [ReserveStock(order_id=f"g{i}", lines=(StockLine(sku="SKU-A", quantity=1),)) for i in range(8)]
            + [ReserveStock(order_id=f"g{i}", lines=(StockLine(sku="SKU-B", quantity=1),)) for i in range(8, 10)],
            callback=ReleaseStock(order_id="g0"),
        )
    assert chained.wait(timeout=30) == [None, None, None]
    assert fanned.wait(timeout=30) == [None] * 10
    assert Reservation.objects.get(order_id="c1").status == "released"
    assert Reservation.objects.get(order_id="g0").status == "released"
    assert Reservation.objects.filter(order_id__startswith="g", status="reserved").count() == 9

    Reservation.objects.create(order_id="gone", lines=[], status="released")
    with transaction.atomic():
        failing = chain(
            ReserveStock(order_id="gone", lines=(StockLine(sku="SKU-A", quantity=1),)),
            ReleaseStock(order_id="never"),
        )
    with pytest.raises(WorkflowFailed) as failure:
        failing.wait(timeout=30)
    assert "member 0 (inventory.ReserveStock" in failure.value.error
    assert "Conflict: reservation for order gone was already released" in failure.value.error
    assert not Message.objects.filter(payload__order_id="never").exists()
