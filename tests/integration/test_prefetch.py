"""How many messages a consumer holds: CONCURRENCY x PREFETCH_MULTIPLIER while handlers are
slow (the rest stay in JetStream for the other replicas), more while they are fast."""

from decimal import Decimal

import pytest
from django.db import transaction

from apps.inventory.contracts import ReleaseStock
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import wait_until
from apps.orders.models import Order
from apps.payments.contracts import ChargePayment
from tests.integration.helpers import js_call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def peak_in_flight(url: str, durable: str, timeout: float) -> int:
    """The most messages delivered and not yet acknowledged, polled until the durable is drained."""
    peak = 0

    def drained():
        nonlocal peak
        info = js_call(url, lambda nc, js: js.consumer_info("CATGA_CMD", durable))
        peak = max(peak, info.num_ack_pending)
        return info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq > 0

    wait_until(drained, timeout=timeout, interval=0.02, what=f"{durable} drained")
    return peak


def test_slow_handlers_are_not_hoarded_by_one_replica(nats_settings, workers):
    for _ in range(2):  # two replicas, two threads each: 2 x 4 in flight each
        workers.start("payments", extra_args=["--concurrency", "2"], FAKE_PROVIDER_DELAY="0.3")
    with transaction.atomic():
        for i in range(40):
            # A charge for an order that does not exist is refused at once: these must reach
            # the slow provider call to hold their slots.
            Order.objects.create(id=f"slow-{i}", customer_id="c", total=Decimal("1.00"), payment_token="tok_visa")
            mediator.send(ChargePayment(order_id=f"slow-{i}", amount=Decimal("1.00"), token="tok_visa"))

    assert peak_in_flight(nats_settings.CATGA["NATS_URL"], "payments_cmd", timeout=60) <= 16


def test_fast_handlers_get_more_in_flight_than_the_threads_prefetch(nats_settings, workers):
    with transaction.atomic():  # queued before the consumer starts: it finds a backlog
        for i in range(3000):
            mediator.send(ReleaseStock(order_id=f"fast-{i}", reason="prefetch test"))
    workers.start("inventory", extra_args=["--concurrency", "1"])  # 1 x 4 in flight while slow

    assert peak_in_flight(nats_settings.CATGA["NATS_URL"], "inventory_cmd", timeout=120) > 4
