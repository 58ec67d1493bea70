"""Revoke and expire over real NATS, PostgreSQL and `run_consumer` workers."""

import io
import time

import pytest
from django.core.management import call_command
from django.db import transaction

from apps.inventory.contracts import ReserveStock, StockLine
from apps.inventory.models import Item
from apps.mediator.models import Delivery, Message
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import wait_until
from tests.integration.helpers import js_call

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def reserve(order_id: str, quantity: int = 1, **options) -> str:
    with transaction.atomic():
        handle = mediator.send(
            ReserveStock(order_id=order_id, lines=(StockLine(sku="SKU-B", quantity=quantity),)), **options
        )
    return handle.message_id


def status(message_id: str) -> str:
    return Message.objects.get(pk=message_id).status


def test_a_countdown_message_revoked_before_it_is_due_is_never_handled(nats_settings, catalogue, workers):
    workers.start("inventory")  # its relay publishes what is due
    revoked = reserve("later-revoked", quantity=2, countdown=2)
    marker = reserve("later-kept", quantity=1, countdown=2)  # due at the same moment, sent after it
    call_command("revoke", revoked, "--reason", "cancelled", stdout=io.StringIO())

    wait_until(lambda: status(marker) == "handled", timeout=30, what="the other countdown message handled")

    assert status(revoked) == "revoked"
    assert Message.objects.get(pk=revoked).publish_attempts == 0  # the relay never took it
    assert not Delivery.objects.filter(message_id=revoked).exists()
    assert Item.objects.get(sku="SKU-B").reserved == 1


def test_messages_revoked_or_expired_while_queued_are_acknowledged_unrun(nats_settings, catalogue, workers):
    revoked = reserve("queued-revoked", quantity=2)
    expiring = reserve("queued-expiring", quantity=1, expires=1)
    marker = reserve("queued-kept", quantity=1)
    wait_until(
        lambda: {status(m) for m in (revoked, expiring, marker)} == {"published"},
        timeout=30,
        what="all three in JetStream, no consumer running",
    )
    call_command("revoke", revoked, stdout=io.StringIO())
    expires_at = Message.objects.get(pk=expiring).expires_at.timestamp()
    wait_until(lambda: time.time() > expires_at, timeout=5, what="the expiry to pass while it is queued")

    workers.start("inventory")
    wait_until(lambda: status(marker) == "handled", timeout=30, what="the message queued after them handled")
    wait_until(lambda: status(expiring) == "expired", timeout=30, what="the expired message recorded expired")

    assert status(revoked) == "revoked"
    assert not Delivery.objects.filter(message_id__in=[revoked, expiring]).exists()
    assert Item.objects.get(sku="SKU-B").reserved == 1  # only the marker's

    def consumer():
        return js_call(workers.nats_url, lambda nc, js: js.consumer_info("CATGA_CMD", "inventory_cmd"))

    info = wait_until(
        lambda: (i := consumer()) and i.num_ack_pending == 0 and i.num_pending == 0 and i,
        timeout=30,
        what="every delivery acknowledged",
    )
    assert info.num_redelivered == 0  # settled on first delivery: not retried, not dead-lettered
    assert not Message.objects.filter(status="dead").exists()
