"""Poison messages settle in seconds, as dead letters with their reason, and spare their neighbours.

Each kind below once escaped the dispatcher (an exception outside any handler's try):
the worker neither acknowledged nor retried it, JetStream redelivered it every ACK_WAIT
forever, and the handler thread handed the same exception to every delivery of its
chunk, so a valid neighbour went unacknowledged too. They are published in one burst
with valid messages between them, so they share fetches, chunks and group commits.
"""

import asyncio
import json
import random

import pytest

from apps.inventory.models import Reservation
from apps.mediator.models import Delivery, Message
from apps.mediator.servers.ports import wait_until
from tests.integration.helpers import dead_letters, js_call, settled
from tests.reliability import garbage

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

POISON = [garbage._deep, garbage._nul_in_body, garbage._bad_workflow, garbage._huge_header]


def _good(tag: str) -> garbage.Garbage:
    headers = garbage._headers(tag, garbage.RESERVE[1])
    return garbage.Garbage("good", garbage.RESERVE[0], headers, garbage._reserve(f"order-{tag}"), "", tag)


def _publish(url: str, items: list[garbage.Garbage]) -> None:
    async def send(nc, js):
        await asyncio.gather(*(js.publish(i.subject, i.body, headers=i.headers) for i in items))

    js_call(url, send)


def test_poison_messages_are_dead_in_seconds_and_their_neighbours_succeed(big_catalogue, workers):
    # ACK_WAIT far beyond the deadline: settling must not wait for a redelivery.
    workers.start("inventory", CATGA_ACK_WAIT="120")
    rng = random.Random(15)
    poison, good = [], []
    for round_ in range(3):  # every kind, with its variants, beside valid messages
        for n, kind in enumerate(POISON):
            tag = f"poison-{round_}-{n}"
            poison.append(_tagged(kind, tag, rng))
            good.append(_good(f"good-{round_}-{n}"))
    burst = [item for pair in zip(poison, good, strict=True) for item in pair]
    _publish(workers.nats_url, burst)

    wait_until(
        lambda: settled(workers.nats_url, only=("inventory_cmd",)), timeout=20, what="every command to be settled"
    )

    letters = dead_letters(workers.nats_url)
    for item in poison:
        assert item.reason in letters.get(item.tag, ""), (item.kind, item.tag, letters.get(item.tag))
    assert not [g.tag for g in good if g.tag in letters]
    for item in good:
        order_id = json.loads(item.body)["order_id"]
        assert Reservation.objects.filter(order_id=order_id).exists(), item.tag
    assert not Delivery.objects.filter(handler__contains="reserve_stock", status="dead").exists()


def _tagged(kind, tag: str, rng) -> garbage.Garbage:
    item = kind(tag, rng)
    return garbage.Garbage(item.kind, item.subject, item.headers, item.body, item.reason, tag)


def test_a_full_dead_letter_stream_drops_its_oldest_letters_and_every_message_still_settles(workers):
    # A small bound: 40 dead letters of ~1.3 kB overflow 16 KiB; a refused one would stay unsettled.
    workers.start("inventory", CATGA_DLQ_MAX_BYTES=str(16 * 1024))
    items = []
    for n in range(40):
        tag = f"unknown-{n:02d}"
        headers = garbage._headers(tag, "inventory.Teleport")
        body = json.dumps({"padding": "x" * 1000}).encode()
        items.append(garbage.Garbage("unknown type", "catga.inventory.cmd.Teleport", headers, body, "unknown", tag))
    _publish(workers.nats_url, items)

    wait_until(
        lambda: settled(workers.nats_url, only=("inventory_cmd",)), timeout=20, what="every command to be settled"
    )

    async def dlq(nc, js):
        info = await js.stream_info("CATGA_DLQ")
        return info.config.max_bytes, info.state

    max_bytes, state = js_call(workers.nats_url, dlq)
    assert max_bytes == 16 * 1024 and state.bytes <= max_bytes
    # All 40 were taken (none refused, so none left unsettled), the oldest dropped to make room.
    assert state.last_seq == len(items) and state.first_seq > 1
    assert len(dead_letters(workers.nats_url)) == state.messages < len(items)
    # The history keeps every one: replay reads it, not the stream.
    assert Message.objects.filter(status="dead", type="inventory.Teleport").count() == len(items)
