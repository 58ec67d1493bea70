"""A rate limit held across two consumer replicas on real NATS (issue 18): 5 starts a second
in total, whichever replica fetched what; over the limit a message waits, never dropped,
dead-lettered or charged an attempt."""

import json

from django.db import transaction

from apps.inventory.contracts import ReleaseStock
from apps.mediator import runtime
from apps.mediator.models import Delivery, Message
from apps.mediator.servers.ports import wait_until

RATE = 5.0
COUNT = 100  # 20 seconds' worth


def test_a_rate_limit_of_5_per_second_holds_over_two_replicas(workers):
    limit = json.dumps({"inventory.ReleaseStock": f"{RATE:g}/s"})
    for _ in range(2):
        workers.start("inventory", CATGA_RATE_LIMITS=limit, CATGA_CONCURRENCY="8")
    mediator = runtime.get_mediator()
    with transaction.atomic():
        ids = [mediator.send(ReleaseStock(order_id=f"rate-{i}", reason="rate")).message_id for i in range(COUNT)]

    messages = Message.objects.filter(pk__in=ids)
    wait_until(
        lambda: messages.filter(status=Message.Status.HANDLED).count() == COUNT,
        timeout=90,
        what=f"{COUNT} messages handled",
    )
    runs = Delivery.objects.filter(message_id__in=ids)
    assert set(runs.values_list("status", flat=True)) == {Delivery.Status.SUCCEEDED}
    assert set(runs.values_list("attempts", flat=True)) == {1}  # waiting spent no attempt
    starts = sorted(runs.values_list("first_started_at", flat=True))
    span = (starts[-1] - starts[0]).total_seconds()
    rate = (COUNT - 1) / span
    assert abs(rate - RATE) <= RATE * 0.10, f"{rate:.2f}/s over {span:.1f}s"
    # No second holds more than its share (one start of slack for a slot on its edge).
    busiest = max(sum(1 for t in starts if 0 <= (t - s).total_seconds() < 1.0) for s in starts)
    assert busiest <= RATE + 1, f"{busiest} starts within one second"
