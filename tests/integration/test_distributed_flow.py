"""The order flow across processes over a real NATS JetStream server.

This test process plays the web: the REST API publishes through the outbox over
NATS; the handlers run in `run_consumer` child processes, one per context as in
Kubernetes.
"""

import asyncio
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from django.db import connection, transaction

from apps.inventory.contracts import ReleaseStock
from apps.inventory.models import Item
from apps.mediator.models import Message
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import wait_until
from apps.mediator.storage import outbox
from apps.orders.models import Order
from apps.payments.models import Payment
from tests.integration.helpers import final_status, place, start_all

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_happy_out_of_stock_and_declined_orders_across_processes(api, catalogue, workers):
    start_all(workers)

    happy = place(api, [{"sku": "SKU-A", "quantity": 2}])
    short = place(api, [{"sku": "SKU-RARE", "quantity": 5}])
    declined = place(api, [{"sku": "SKU-B", "quantity": 1}], token="tok_declined")

    assert (final_status(happy).status, final_status(happy).reason) == ("confirmed", "")
    assert (final_status(short).status, final_status(short).reason) == ("cancelled", "out_of_stock")
    assert (final_status(declined).status, final_status(declined).reason) == ("cancelled", "payment_declined")

    wait_until(lambda: Item.objects.get(sku="SKU-A").on_hand == 8, what="stock to be committed")
    wait_until(lambda: Item.objects.get(sku="SKU-B").reserved == 0, what="declined stock to be released")
    assert Item.objects.get(sku="SKU-A").reserved == 0
    assert Item.objects.get(sku="SKU-B").on_hand == 5
    assert Item.objects.get(sku="SKU-RARE").on_hand == 1
    assert list(Payment.objects.filter(order_id=happy).values_list("status", flat=True)) == ["captured"]
    assert not Payment.objects.filter(order_id=short).exists()
    # Everything sent was published and handled by a process other than this one: nothing
    # failed, and what nobody handles (the last events) leaves the outbox once its mark is
    # written (the publisher marks a moment after the ack: MARK_DELAY).
    assert not Message.objects.filter(status__in=["failed", "dead"])
    unsettled = Message.objects.filter(status="pending").exclude(type="orders.OrderPlaced")
    wait_until(lambda: not unsettled.exists(), timeout=10, what="every published row to leave the outbox")


def test_an_order_placed_while_nats_is_down_is_accepted_and_completes_after_it_returns(
    api, catalogue, workers, nats_server
):
    if os.environ.get("NATS_URL_TEST"):
        pytest.fail("this test restarts NATS and needs the session's own nats-server (unset NATS_URL_TEST)")
    start_all(workers)
    warm = place(api, [{"sku": "SKU-A", "quantity": 1}])
    assert final_status(warm).status == "confirmed"

    nats_server.stop()
    try:
        order_id = place(api, [{"sku": "SKU-A", "quantity": 1}])  # 202 without NATS
        assert Order.objects.get(pk=order_id).status == "pending"
        assert Message.objects.filter(
            correlation_id=Order.objects.get(pk=order_id).correlation_id, status="pending"
        ).exists()
    finally:
        nats_server.start()

    order = final_status(order_id, timeout=60)
    assert order.status == "confirmed"
    assert Payment.objects.filter(order_id=order_id, status="captured").count() == 1
    wait_until(lambda: Item.objects.get(sku="SKU-A").on_hand == 8, what="both orders' stock committed")


def test_a_rolled_back_transaction_publishes_nothing(nats_settings, db):
    seen: list[str] = []

    async def listen(ready, stop):
        nc = await nats.connect(nats_settings.CATGA["NATS_URL"])

        async def on_message(msg):
            seen.append(msg.headers.get("Nats-Msg-Id"))

        await nc.subscribe("catga.>", cb=on_message)
        await nc.flush()
        ready.set()
        await stop.wait()
        await nc.flush()
        await nc.close()

    import threading

    loop = asyncio.new_event_loop()
    ready, stop = asyncio.Event(), asyncio.Event()
    listener = threading.Thread(target=loop.run_until_complete, args=(listen(ready, stop),), daemon=True)
    listener.start()
    wait_until(ready.is_set, what="the listener to subscribe")

    with pytest.raises(RuntimeError), transaction.atomic():
        ghost = mediator.send(ReleaseStock(order_id="ghost", reason="rolled back"))
        raise RuntimeError("the view failed after sending")
    with transaction.atomic():
        sentinel = mediator.send(ReleaseStock(order_id="sentinel", reason="committed"))

    wait_until(lambda: sentinel.message_id in seen, what="the committed message on the wire")
    loop.call_soon_threadsafe(stop.set)
    listener.join(5)
    assert ghost.message_id not in seen
    assert not Message.objects.filter(pk=ghost.message_id).exists()


def test_two_relays_at_once_publish_every_outbox_row_exactly_once(nats_settings, workers):
    rows = 600
    ids = []
    with transaction.atomic():
        for i in range(rows):
            ids.append(mediator.send(ReleaseStock(order_id=f"relay-{i}", reason="relay test")).message_id)
        # Keep the after-commit publish from sending them: this test is about the relays.
        from apps.mediator.runtime import get_mediator

        get_mediator().transport.publish = lambda batch: None
    Message.objects.filter(pk__in=ids).update(created_at=Message.objects.get(pk=ids[0]).created_at.replace(year=2000))

    counts: dict[str, int] = {}
    subscribed, stop = threading.Event(), threading.Event()

    def count() -> None:
        async def run():
            nc = await nats.connect(nats_settings.CATGA["NATS_URL"])

            async def on_message(msg):
                key = msg.headers.get("Nats-Msg-Id")
                counts[key] = counts.get(key, 0) + 1

            await nc.subscribe("catga.inventory.cmd.>", cb=on_message)
            await nc.flush()
            subscribed.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(run())

    counter = threading.Thread(target=count, daemon=True)
    counter.start()
    assert subscribed.wait(10)
    argv = [sys.executable, "manage.py", "relay_outbox", "--batch", "50"]
    with transaction.atomic(), connection.cursor() as cursor:
        # Both relays queue behind this lock and start sweeping at the same moment, however
        # long each took to start (seconds apart on a busy machine: one drained it all).
        cursor.execute("LOCK TABLE mediator_message IN EXCLUSIVE MODE")
        procs = [
            subprocess.Popen(argv, cwd=ROOT, env=workers.env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            for _ in range(2)
        ]

        def both_waiting() -> bool:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else the transaction sees one snapshot
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE %s AND pid <> pg_backend_pid()",
                ["%mediator_message%"],
            )
            return cursor.fetchone()[0] == 2

        wait_until(both_waiting, timeout=60, what="both relays waiting on the outbox")
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    codes = [p.returncode for p in procs]
    wait_until(lambda: sum(counts.values()) >= rows, timeout=10, what="every relayed message to arrive")
    stop.set()
    counter.join(10)

    assert codes == [0, 0], outputs
    published = [int(out.strip().splitlines()[-1].split()[-1]) for out in outputs]
    assert sum(published) == rows, outputs
    assert all(n > 0 for n in published), f"both relays should have taken a share: {published}"
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, {k: v for k, v in counts.items() if v > 1}
    assert Message.objects.filter(pk__in=ids, status="published", publish_attempts=1).count() == rows
    assert outbox.backlog() == 0


def test_run_consumer_rejects_bad_options_with_a_clear_error(workers):
    bad_context = workers.run("run_consumer", "--context", "shipping")
    assert bad_context.returncode != 0
    assert "unknown context(s): shipping" in bad_context.stderr

    unreachable = workers.run("run_consumer", NATS_URL="nats://127.0.0.1:1", timeout=120)
    assert unreachable.returncode != 0
    assert "cannot reach NATS" in unreachable.stderr


def test_stock_and_money_add_up(api, catalogue, workers):
    start_all(workers)
    ids = [
        place(api, [{"sku": "SKU-B", "quantity": 1}], token=t)
        for t in ["tok_visa", "tok_flaky", "tok_declined", "tok_visa", "tok_visa", "tok_visa"]
    ]
    orders = [final_status(i, timeout=60) for i in ids]
    confirmed = [o for o in orders if o.status == "confirmed"]
    # 5 in stock, one card declined. The inventory consumer reserves in parallel, so the
    # declined order may find the stock gone first (out_of_stock, never charged); if it was
    # reserved and declined, the sixth order is confirmed only if that stock was released
    # before it was reserved. The books must add up either way.
    assert len(confirmed) in (4, 5)
    declined = orders[2]
    assert (declined.status, declined.reason in ("payment_declined", "out_of_stock")) == ("cancelled", True)
    assert {o.reason for o in orders if o.status == "cancelled" and o is not declined} <= {"out_of_stock"}
    wait_until(lambda: Item.objects.get(sku="SKU-B").reserved == 0, what="reservations settled")
    assert Item.objects.get(sku="SKU-B").on_hand == 5 - len(confirmed)
    captured = Payment.objects.filter(status="captured")
    assert sorted(captured.values_list("order_id", flat=True)) == sorted(o.id for o in confirmed)
    assert sum((p.amount for p in captured), Decimal("0")) == Decimal("1.25") * len(confirmed)


def test_a_process_with_fewer_contexts_never_narrows_the_shared_streams(nats_settings):
    import asyncio

    from apps.mediator.transports.nats import topology

    async def provision(contexts):
        import nats as nats_client

        nc = await nats_client.connect(nats_settings.CATGA["NATS_URL"])
        try:
            js = nc.jetstream()
            await topology.ensure_streams(js, contexts)
            return (await js.stream_info("CATGA_CMD")).config.subjects
        finally:
            await nc.close()

    assert sorted(asyncio.run(provision(["orders", "inventory", "payments", "shipping"]))) == [
        "catga.inventory.cmd.>",
        "catga.orders.cmd.>",
        "catga.payments.cmd.>",
        "catga.shipping.cmd.>",
    ]
    # An older process that does not know "shipping" yet leaves its subjects alone.
    assert "catga.shipping.cmd.>" in asyncio.run(provision(["orders", "inventory", "payments"]))
