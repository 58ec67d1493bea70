"""Malformed NATS messages, published straight to the streams, while real orders flow.

Random bytes, bodies over MAX_BODY_BYTES, wrong JSON types, missing or bad headers,
unknown types, messages on another context's subject, and forged ids (the id of a
message already handled, with another body or type, or garbage): each must end in
the dead-letter stream with its reason and change nothing, and the workers must go
on serving orders, alive, meanwhile. The time N orders take with
and without the garbage is printed, not asserted (timing belongs in bench/).
"""

import asyncio
import random
import threading
import time
from decimal import Decimal

import nats
import pytest

from apps.inventory.models import Item, Reservation
from apps.mediator.models import Delivery, Message
from apps.mediator.servers.ports import wait_until
from apps.orders.models import Order
from apps.payments.models import Payment
from tests.integration.conftest import probe
from tests.integration.helpers import CONTEXTS, dead_letters, place, settled
from tests.reliability import garbage
from tests.reliability.garbage import Handled

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

ORDERS = 25  # per phase
GARBAGE_MAX = 400  # bounded however slow the orders are
STOCK = 1000


@pytest.fixture
def stock(db):
    Item.objects.create(sku="SKU-X", name="X", price=Decimal("3.00"), on_hand=STOCK)


class Liveness(threading.Thread):
    """Samples every worker's /health/live until stopped."""

    def __init__(self, procs):
        super().__init__(daemon=True)
        self.procs = procs
        self.samples: list[tuple[str, int | None]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(0.2):
            for name, proc in self.procs.items():
                self.samples.append((name, probe(proc.health_port, "/health/live")))


class Publisher(threading.Thread):
    """Publishes hostile messages, paced, until stopped (at least one of each kind) or GARBAGE_MAX."""

    def __init__(self, url: str, handled: list[Handled], minimum: int):
        super().__init__(daemon=True)
        self.url, self.minimum = url, minimum
        self.items = garbage.stream(random.Random(10), handled)
        self.sent: list[garbage.Garbage] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        try:
            asyncio.run(self._publish())
        except BaseException as exc:
            self.error = exc

    async def _publish(self):
        nc = await nats.connect(self.url)
        js = nc.jetstream()
        try:
            while len(self.sent) < GARBAGE_MAX and (len(self.sent) < self.minimum or not self.stop.is_set()):
                item = next(self.items)
                await js.publish(item.subject, item.body, headers=item.headers, timeout=10)
                self.sent.append(item)
                await asyncio.sleep(0.01)
        finally:
            await nc.close()


def orders_round(api) -> tuple[list[str], float]:
    started = time.monotonic()
    ids = [
        place(api, [{"sku": "SKU-X", "quantity": 1}], token=random.choice(["tok_visa", "tok_flaky"]))
        for _ in range(ORDERS)
    ]
    wait_until(
        lambda: not Order.objects.filter(pk__in=ids, status="pending").exists(),
        timeout=120,
        what=f"{ORDERS} orders to finish",
    )
    return ids, time.monotonic() - started


def test_malformed_messages_are_dead_lettered_change_nothing_and_orders_keep_flowing(api, stock, workers, capsys):
    procs = {context: workers.start(context) for context in CONTEXTS}
    liveness = Liveness(procs)
    liveness.start()

    baseline_ids, baseline = orders_round(api)
    handled = [
        Handled(row.id, row.type, f"catga.{row.type.replace('.', '.cmd.', 1)}")
        for row in Message.objects.filter(
            type__in=["inventory.ReserveStock", "payments.ChargePayment"], status="handled"
        )
    ]
    before = {
        d.message_id: (d.attempts, d.status) for d in Delivery.objects.filter(message_id__in=[h.id for h in handled])
    }

    publisher = Publisher(workers.nats_url, handled, minimum=3 * (len(garbage.KINDS) + 1))
    publisher.start()
    garbage_ids, with_garbage = orders_round(api)
    publisher.stop.set()
    publisher.join(60)
    assert not publisher.is_alive() and publisher.error is None, publisher.error
    sent = publisher.sent
    wait_until(lambda: settled(workers.nats_url), timeout=90, what="every message settled")
    liveness.stop.set()
    liveness.join(5)

    with capsys.disabled():  # the figures, shown in every run; timing is never asserted
        print(
            f"\n{ORDERS} orders: {baseline:.2f}s alone, {with_garbage:.2f}s beside {len(sent)} hostile messages "
            f"({sum(len(g.body) for g in sent) / 1024:.0f} KiB)"
        )
    # The workers kept serving: every order of both rounds confirmed, every process alive and live.
    assert Order.objects.filter(pk__in=baseline_ids + garbage_ids, status="confirmed").count() == 2 * ORDERS
    assert all(proc.poll() is None for proc in procs.values()), workers.logs()
    assert liveness.samples and all(status == 200 for _, status in liveness.samples), [
        s for s in liveness.samples if s[1] != 200
    ][:5]
    assert "could not settle" not in workers.logs(), "a message was left unsettled (it would be redelivered forever)"

    # Each hostile message is in the dead-letter stream with its reason...
    letters = dead_letters(workers.nats_url)
    wrong = {g.tag: (g.kind, g.reason, letters.get(g.tag)) for g in sent if g.reason not in letters.get(g.tag, "")}
    assert not wrong, wrong
    assert len(letters) == len(sent), "dead letters that no hostile message explains"
    kinds = {g.kind for g in sent}
    assert kinds >= {k(f"x-{i}", random.Random(i)).kind for i, k in enumerate(garbage.KINDS)}
    assert kinds >= {"forged id, other body", "forged id, other type", "forged id, garbage body"}

    # ...and applied nothing: the forged copies of handled messages least of all.
    assert not Reservation.objects.filter(order_id__startswith="forged").exists()
    assert not Payment.objects.filter(order_id__startswith="forged").exists()
    after = {d.message_id: (d.attempts, d.status) for d in Delivery.objects.filter(message_id__in=before)}
    assert after == before, "a forged id changed the inbox record of the message it copied"
    assert set(Message.objects.filter(pk__in=before).values_list("status", flat=True)) == {"handled"}
    item = Item.objects.get(sku="SKU-X")
    assert (item.on_hand, item.reserved) == (STOCK - 2 * ORDERS, 0)
    assert Payment.objects.filter(status="captured").count() == 2 * ORDERS
