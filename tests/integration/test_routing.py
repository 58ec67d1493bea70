"""Per-type queues on real NATS (issue 18, Celery's task_routes): a routed type waits for
its own queue's worker, the default worker never handles it, and nothing is lost."""

import json

import pytest
from django.db import transaction

from apps.inventory.contracts import ReleaseStock
from apps.mediator import runtime
from apps.mediator.models import Message, WorkerHeartbeat
from apps.mediator.servers.ports import wait_until
from tests.integration.helpers import settled


def nats_url(workers) -> str:
    return workers.nats_url


ROUTES = {"inventory.ReleaseStock": "slow"}
COUNT = 20


@pytest.fixture
def routed(nats_settings):
    nats_settings.CATGA = {**nats_settings.CATGA, "ROUTES": ROUTES}
    runtime.reset()
    return json.dumps(ROUTES)


def test_a_routed_type_waits_for_its_queue_and_only_that_queue_handles_it(workers, routed):
    beat = {"CATGA_ROUTES": routed, "CATGA_WORKER_HEARTBEAT": "0.5"}
    fast = workers.start("inventory", extra_args=["--queue", "default"], **beat)
    mediator = runtime.get_mediator()
    with transaction.atomic():
        ids = [mediator.send(ReleaseStock(order_id=f"route-{i}", reason="route")).message_id for i in range(COUNT)]
    messages = Message.objects.filter(pk__in=ids)
    # The default worker sees them (its consumer has the context's whole subject space) and
    # leaves them to their queue: once its consumer has settled all of them, none is handled.
    url = workers.nats_url
    wait_until(lambda: messages.filter(status=Message.Status.PUBLISHED).count() == COUNT, timeout=30, what="sent")
    wait_until(lambda: settled(url, only=("inventory_cmd",)), timeout=30, what="the default consumer settled")
    assert not messages.filter(status=Message.Status.HANDLED).exists()
    assert not settled(url, only=("inventory_cmd_slow",))  # they wait in their own queue
    fast_row = lambda: WorkerHeartbeat.objects.filter(pid=fast.pid).first()  # noqa: E731

    slow = workers.start("inventory", extra_args=["--queue", "slow"], **beat)
    wait_until(
        lambda: messages.filter(status=Message.Status.HANDLED).count() == COUNT,
        timeout=30,
        what="the slow queue's worker handled them",
    )
    slow_row = wait_until(
        lambda: (row := WorkerHeartbeat.objects.filter(pid=slow.pid, handled__gte=COUNT).first()) and row,
        timeout=15,
        what="the slow worker's count",
    )
    assert slow_row.handled == COUNT
    assert fast_row().handled == 0


def test_an_unknown_queue_or_route_is_refused_at_start(workers, routed):
    result = workers.run("run_consumer", "--context", "inventory", "--queue", "nope", CATGA_ROUTES=routed)
    assert result.returncode != 0 and "no queue nope in inventory" in result.stderr
    bad = json.dumps({"inventory.Nope": "slow", "inventory.ReleaseStock": "Bad Name"})
    result = workers.run("run_consumer", "--context", "inventory", CATGA_ROUTES=bad)
    assert result.returncode != 0
    assert "'inventory.Nope']: no such message type" in result.stderr
    assert "queue 'Bad Name' must match" in result.stderr
