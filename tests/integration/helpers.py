"""Shared steps of the integration tests: placing orders, waiting for them, checking the books."""

import asyncio
from collections import Counter

import nats

from apps.inventory.models import Item, Reservation
from apps.mediator.models import SagaState
from apps.mediator.runtime import contexts
from apps.mediator.servers.ports import wait_until
from apps.orders.models import Order
from apps.payments.models import Payment

CONTEXTS = tuple(contexts())  # every installed context, as the mediator finds them


def place(api, lines, token="tok_visa"):
    response = api.post("/api/orders/", {"customer_id": "c-int", "lines": lines, "payment_token": token}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["id"]


def final_status(order_id, timeout=30):
    """The order once it left pending and its saga settled (the saga completes on OrderConfirmed,
    a message after the one that confirmed the order)."""

    def done():
        order = Order.objects.get(pk=order_id)
        if order.status == "pending":
            return None
        saga = SagaState.objects.filter(correlation_id=order.correlation_id).first()
        return order if saga is None or saga.status not in ("running", "compensating") else None

    return wait_until(done, timeout=timeout, what=f"order {order_id} to leave pending, its saga to settle")


def at_charge_step(order_id: str) -> Order:
    """Wait until the order's saga has sent its charge (with no payments consumer, it stays there)."""
    wait_until(
        lambda: any(e["name"] == "charge_payment" for e in SagaState.objects.get().step_log),
        what="the saga at its charge step",
    )
    return Order.objects.get(pk=order_id)


def js_call(url, coro_factory):
    async def run():
        nc = await nats.connect(url)
        try:
            return await coro_factory(nc, nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())


def all_final(ids, timeout=90):
    return [final_status(i, timeout=timeout) for i in ids]


def assert_consistent(orders, initial_stock):
    """No stock reserved twice, no payment captured twice, nothing lost."""
    sold = Counter()
    for order in orders:
        captured = Payment.objects.filter(order_id=order.id, status="captured").count()
        if order.status == "confirmed":
            assert captured == 1, order.id
            for line in order.lines.all():
                sold[line.sku] += line.quantity
        else:
            assert captured == 0, order.id
    wait_until(lambda: not Item.objects.filter(reserved__gt=0).exists(), what="reservations to settle")
    for sku, initial in initial_stock.items():
        assert Item.objects.get(sku=sku).on_hand == initial - sold[sku], sku
    assert Reservation.objects.values("order_id").distinct().count() == Reservation.objects.count()


def start_all(workers):
    """One worker per context, as the Kubernetes Deployments run them."""
    return [workers.start(context) for context in CONTEXTS]


def settled(url: str, only: tuple[str, ...] = ()) -> bool:
    """Every durable consumer (or those named) has acknowledged or terminated everything it was given."""

    async def check(nc, js):
        for stream in ("CATGA_CMD", "CATGA_EVT"):
            for consumer in await js.consumers_info(stream):
                if only and consumer.name not in only:
                    continue
                if consumer.num_pending or consumer.num_ack_pending:
                    return False
        return True

    return js_call(url, check)


def dead_letters(url: str, tag_header: str = "Garbage-Id") -> dict[str, str]:
    """{tag: reason} of every dead letter (the tag from its header, or its body's first word)."""

    async def read(nc, js):
        info = await js.stream_info("CATGA_DLQ")
        found = {}
        if not info.state.messages:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg("CATGA_DLQ", seq)
            headers = msg.headers or {}
            tag = headers.get(tag_header) or msg.data.split(b" ", 1)[0].decode("ascii", "replace")
            found[tag] = headers.get("Catga-Dead-Reason", "")
        return found

    return js_call(url, read)
