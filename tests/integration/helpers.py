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
