"""The dashboard's consumer pending per durable, read from a real JetStream by the web process's transport."""

import pytest

from apps.mediator import runtime
from apps.mediator.servers.ports import wait_until
from apps.mediator.transports.nats import topology
from tests.integration.helpers import place

pytestmark = pytest.mark.integration


def test_consumer_pending_counts_what_waits_for_each_durable_and_the_dashboard_shows_it(
    nats_settings, catalogue, api, admin_client
):
    runtime.reset()  # this process publishes over NATS from here on
    transport = runtime.get_mediator().transport
    registry = runtime.get_registry()
    durables = {d.name for d in topology.durables(registry, registry.contexts)}

    # No worker runs: the web process places each order (PlaceOrder is handled in the
    # request), and the ReserveStock it sends waits in the inventory's command consumer.
    for _ in range(3):
        place(api, [{"sku": "SKU-A", "quantity": 1}])

    counts = wait_until(
        lambda: (c := transport.consumer_pending()) and c.get("inventory_cmd") == 3 and c,
        timeout=15,
        what="three commands pending for inventory_cmd",
    )
    assert set(counts) == durables
    assert all(n == 0 for name, n in counts.items() if name != "inventory_cmd")

    html = admin_client.get("/admin/mediator/message/dashboard/?refresh=0").content.decode()
    assert 'id="consumers-na"' not in html
    assert '<th scope="row">inventory_cmd</th><td class="catga-num">3</td>' in html
    assert '<th scope="row">payments_cmd</th><td class="catga-num">0</td>' in html
