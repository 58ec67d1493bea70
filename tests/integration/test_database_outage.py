"""A PostgreSQL outage delays work; it never spends attempts, dead-letters or cancels anything.

Orders are in flight when the database stops, for longer than MAX_ATTEMPTS x ACK_WAIT
and longer than a saga step's timeout. Before the fix every redelivery during the
outage counted as an attempt (JetStream's delivery count), so the orders were buried
as "attempts exhausted" without their handlers ever running, and their sagas were
cancelled by timers that fired while no step could run.
"""

import time

import pytest
from django.db import connection

from apps.mediator.core.conf import DEFAULTS
from apps.mediator.models import Delivery, SagaState
from apps.mediator.servers.ports import wait_until
from tests.integration.conftest import probe
from tests.integration.helpers import CONTEXTS, all_final, assert_consistent, dead_letters, place

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

ACK_WAIT = 2
STEP_TIMEOUT = 8
OUTAGE = DEFAULTS["MAX_ATTEMPTS"] * ACK_WAIT + 10  # every attempt would be spent twice over


def test_orders_in_flight_through_a_long_database_outage_all_confirm_with_no_attempt_spent(
    api, big_catalogue, workers, settings, catga_database_server
):
    settings.ORDER_STEP_TIMEOUT = STEP_TIMEOUT  # the web schedules the first step's timer
    env = {"CATGA_ACK_WAIT": str(ACK_WAIT), "ORDER_STEP_TIMEOUT": str(STEP_TIMEOUT), "CATGA_METRICS_INTERVAL": "1"}
    procs = [workers.start(context, **env) for context in CONTEXTS]
    ids = [place(api, [{"sku": "SKU-X", "quantity": 1}]) for _ in range(10)]

    catga_database_server.stop()
    down_at = time.monotonic()
    # Every consumer says it cannot work (readiness), while staying alive.
    wait_until(
        lambda: all(probe(p.health_port, "/health/ready") == 503 for p in procs),
        timeout=OUTAGE,
        what="every consumer to turn unready during the outage",
    )
    assert all(probe(p.health_port, "/health/live") == 200 for p in procs)
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - down_at)))  # the outage itself: its length is the test
    catga_database_server.start()
    connection.close()  # this process's connection died with the server

    wait_until(
        lambda: all(probe(p.health_port, "/health/ready") == 200 for p in procs),
        timeout=60,
        what="every consumer to be ready again",
    )
    orders = all_final(ids, timeout=120)
    assert [o.status for o in orders] == ["confirmed"] * len(ids), [(o.id, o.status, o.reason) for o in orders]
    assert not Delivery.objects.exclude(status=Delivery.Status.SUCCEEDED).exists()
    # No handler failed, so no attempt was spent: each ran once, successfully.
    assert set(Delivery.objects.values_list("attempts", flat=True)) == {1}
    assert set(SagaState.objects.values_list("status", flat=True)) == {SagaState.Status.COMPLETED}
    assert dead_letters(workers.nats_url) == {}
    assert_consistent(orders, big_catalogue)
