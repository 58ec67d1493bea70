"""Per-role NATS users on a real nats-server, with the configuration `manage.py
nats_permissions` generates: the whole order flow runs on them, and forged traffic is
refused by NATS itself.

Before them, one shared token let the web pods (or any context) publish
`catga.payments.evt.PaymentCaptured` with a real order's correlation id; only the saga's
own checks (tests/integration/test_saga_safety.py) stood between it and an unpaid order.
"""

import asyncio
import json
import time

import nats
import pytest
from django.db import transaction

from apps.inventory.contracts import StockReserved
from apps.mediator.core import roles
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Kind
from apps.mediator.models import Message
from apps.mediator.runtime import get_registry, mediator
from apps.mediator.servers.nats import NatsServer
from apps.mediator.servers.ports import wait_until
from apps.mediator.transports.nats import permissions
from apps.orders.models import Order
from tests.integration.conftest import Workers
from tests.integration.helpers import CONTEXTS, at_charge_step, final_status, place

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def secured(settings, tmp_path_factory, transactional_db):
    """A nats-server with the generated users; this test process is the web, as `web`."""
    registry = get_registry()
    passwords = {role: f"{role}-secret" for role in roles.roles(registry)}
    server = NatsServer(
        tmp_path_factory.mktemp("nats-secured"), config=permissions.server_config(registry, passwords)
    ).start()
    server.passwords = passwords
    settings.CATGA = {
        **settings.CATGA,
        "TRANSPORT": "apps.mediator.transports.nats.publisher.NatsTransport",
        "NATS_URL": server.url,
        "NATS_USER": roles.WEB,
        "NATS_PASSWORD": passwords[roles.WEB],
        "ROLE": roles.WEB,
        "RELAY_GRACE": 0.5,
    }
    yield server
    from apps.mediator import runtime

    runtime.reset()
    server.stop()


@pytest.fixture
def role_workers(secured, tmp_path, request):
    pool = Workers(secured.url, tmp_path)

    def start(context: str, **env):
        password = secured.passwords[context]
        return pool.start(context, NATS_USER=context, NATS_PASSWORD=password, CATGA_ROLE=context, **env)

    pool.start_as = start
    yield pool
    pool.stop_all()
    if getattr(request.node, "rep_call", None) and request.node.rep_call.failed:
        print(pool.logs())


def publish_as(server, role: str, subject: str, body: bytes, headers: dict) -> list[str]:
    """Publish to JetStream as `role`; returns the errors NATS reported (none: it was stored)."""
    errors: list[str] = []

    async def run():
        async def on_error(exc):
            errors.append(str(exc))

        nc = await nats.connect(server.url, user=role, password=server.passwords[role], error_cb=on_error)
        try:
            await nc.jetstream().publish(subject, body, headers=headers, timeout=2)
        except Exception as exc:  # a refused publish gets no acknowledgement
            errors.append(repr(exc))
        finally:
            await nc.close()

    asyncio.run(run())
    return errors


def settled(server) -> bool:
    """Every durable has acknowledged all it was given, none redelivered: the acks got through."""

    async def run():
        nc = await nats.connect(server.url, user=roles.ADMIN, password=server.passwords[roles.ADMIN])
        try:
            infos = [c for s in ("CATGA_CMD", "CATGA_EVT") for c in await nc.jetstream().consumers_info(s)]
            return all(c.num_pending == 0 and c.num_ack_pending == 0 and c.num_redelivered == 0 for c in infos)
        finally:
            await nc.close()

    return asyncio.run(run())


def stored(server, stream: str, subject: str) -> int:
    async def run():
        nc = await nats.connect(server.url, user=roles.ADMIN, password=server.passwords[roles.ADMIN])
        try:
            info = await nc.jetstream().stream_info(stream, subjects_filter=subject)
            return sum((info.state.subjects or {}).values())
        finally:
            await nc.close()

    return asyncio.run(run())


def test_orders_confirm_cancel_and_dead_letter_with_one_user_per_role(api, catalogue, role_workers, secured):
    for context in CONTEXTS:
        role_workers.start_as(context)

    happy = place(api, [{"sku": "SKU-A", "quantity": 2}])
    declined = place(api, [{"sku": "SKU-B", "quantity": 1}], token="tok_declined")
    assert final_status(happy).status == "confirmed"
    assert (final_status(declined).status, final_status(declined).reason) == ("cancelled", "payment_declined")

    # A message no handler can take is dead-lettered by the inventory user, on its own DLQ subject.
    envelope = Envelope(
        id=new_id(), type="inventory.ReserveStock", kind=Kind.COMMAND, correlation_id=new_id(), created_at=time.time()
    )
    subject = "catga.inventory.cmd.ReserveStock"
    assert publish_as(secured, roles.ADMIN, subject, b'{"order_id": 7}', envelope.to_headers()) == []
    wait_until(lambda: stored(secured, "CATGA_DLQ", f"catga.dlq.{subject[6:]}") == 1, what="the dead letter")
    wait_until(lambda: settled(secured), what="every delivery acknowledged once")
    assert "ermissions violation" not in role_workers.logs().lower()


def test_a_forged_payment_capture_is_refused_by_nats(api, catalogue, role_workers, secured):
    # No payments consumer: the victim's order waits at its charge step, unpaid.
    role_workers.start_as("orders")
    role_workers.start_as("inventory")
    victim = place(api, [{"sku": "SKU-A", "quantity": 2}])
    order = at_charge_step(victim)
    body = json.dumps({"order_id": victim, "payment_id": 1, "amount": str(order.total)}).encode()
    envelope = Envelope(
        id=new_id(),
        type="payments.PaymentCaptured",
        kind=Kind.EVENT,
        correlation_id=order.correlation_id,
        created_at=time.time(),
    )
    subject = "catga.payments.evt.PaymentCaptured"

    # The web's credentials (the internet-facing pods) and every other context's are refused.
    for role in (roles.WEB, "orders", "inventory"):
        errors = publish_as(secured, role, subject, body, envelope.to_headers())
        assert any("permissions violation" in e.lower() for e in errors), (role, errors)
    assert stored(secured, "CATGA_EVT", subject) == 0
    # Nor may they take payments' deliveries: pulling from its durable is refused too.
    assert not permissions.may_publish(get_registry(), "orders", "$JS.API.CONSUMER.MSG.NEXT.CATGA_CMD.payments_cmd")

    # The order is still unpaid and waiting; the real payments consumer then charges it.
    assert Order.objects.get(pk=victim).status == "pending"
    role_workers.start_as("payments")
    assert final_status(victim).status == "confirmed"


def test_what_the_web_may_not_publish_waits_for_the_relay_of_a_context_that_may(role_workers, secured):
    # An admin replay of another context's event, say: the web's user may not send it.
    with transaction.atomic():
        handle = mediator.publish(StockReserved(order_id="no-such-order"))
    row = Message.objects.get(pk=handle.message_id)
    assert row.status == Message.Status.PENDING  # not handed to NATS, which would refuse it

    role_workers.start_as("inventory")  # its relay may publish inventory's events
    wait_until(
        lambda: Message.objects.get(pk=handle.message_id).status != Message.Status.PENDING,
        what="the inventory relay to publish it",
    )
    assert stored(secured, "CATGA_EVT", "catga.inventory.evt.StockReserved") == 1
