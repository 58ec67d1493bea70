"""What every transport must do, run against each one (see conftest.py for the harnesses)."""

import asyncio

import pytest

from apps.mediator.core import codec
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import QoS
from apps.mediator.core.ports import Delivery, Outgoing, Subscription
from apps.mediator.models import Message
from apps.mediator.storage import history
from tests.transports.conftest import CALLS, CONTEXT, Do


def started(harness) -> None:
    if harness.redelivers:
        harness.start_worker()


def test_a_sent_command_is_delivered_once_and_acknowledged(harness):
    started(harness)
    handle = harness.send(Do(key="plain"))
    harness.wait_for(lambda: harness.status(handle) == Message.Status.HANDLED, message="handled")
    assert [attempt for attempt, _ in CALLS.of("plain")] == [1]
    if harness.redelivers:
        # Acknowledged: nothing left pending or waiting for an ack on the durable.
        lag = asyncio.run(harness.mediator.transport.backlog())
        mine = {c.name: c for c in lag.consumers}[f"{CONTEXT}_cmd"]
        assert (mine.pending, mine.ack_pending) == (0, 0)


def test_a_transient_failure_is_retried_after_a_delay_until_it_succeeds(harness):
    started(harness)
    handle = harness.send(Do(key="flaky", fail_times=2))
    harness.wait_for(lambda: harness.status(handle) == Message.Status.HANDLED, message="handled after retries")
    runs = CALLS.of("flaky")
    assert [attempt for attempt, _ in runs] == [1, 2, 3]
    if harness.redelivers:
        # Retried later, not at once: the second run waited for the backoff (>= 0.05 s x jitter 0.5).
        assert runs[1][1] - runs[0][1] >= 0.02


def test_a_permanent_failure_is_a_dead_letter_with_its_reason(harness):
    started(harness)
    handle = harness.send(Do(key="doomed", permanent="no such warehouse"))
    harness.wait_for(lambda: harness.status(handle) == Message.Status.DEAD, message="dead")
    assert len(CALLS.of("doomed")) == 1  # not retried
    assert any("no such warehouse" in error for error in harness.errors(handle))
    harness.wait_for(
        lambda: any("no such warehouse" in reason for reason in harness.dead_letter_reasons()),
        timeout=10,
        message="the dead letter with its reason",
    )


def test_a_long_handler_keeps_its_delivery_with_heartbeats(harness):
    if not harness.redelivers:
        pytest.skip("in-process delivery has no acknowledgement deadline, so there is nothing to keep alive")
    started(harness)
    # Three times ACK_WAIT (1 s): without touch() the message would be delivered again meanwhile.
    handle = harness.send(Do(key="slow", sleep=3.0))
    harness.wait_for(lambda: harness.status(handle) == Message.Status.HANDLED, timeout=30, message="handled")
    assert [attempt for attempt, _ in CALLS.of("slow")] == [1]
    # Delivered once: no copy came back while it worked (the inbox would hide one from the handler).
    assert harness.deliveries_made() == 1


def test_a_delivery_left_unsettled_by_a_dead_consumer_is_delivered_again(harness):
    if not harness.redelivers:
        pytest.skip("in-process delivery has no consumer that can die between receipt and acknowledgement")
    # A consumer process of its own (its own transport and connection), which dies.
    transport = type(harness.mediator.transport)(harness.mediator.dispatcher)

    async def receive_and_die():
        receiver = await transport.open_receiver([CONTEXT], "conformance-doomed")
        got: list = []
        (subscription,) = [s for s in receiver.subscriptions if s.name == f"{CONTEXT}_cmd"]
        assert isinstance(subscription, Subscription)
        for _ in range(50):
            await subscription.fetch(1, 0.5, got.extend)
            if got:
                break
        assert got and isinstance(got[0], Delivery)
        await receiver.close()  # gone without ack, retry or dead: as a crash leaves it
        return got[0].attempt

    # A receiver of its own first, so the command is taken by the consumer that dies.
    handle = harness.send(Do(key="orphan"))
    harness.wait_for(lambda: harness.status(handle) == Message.Status.PUBLISHED, message="published")
    assert asyncio.run(receive_and_die()) == 1
    started(harness)
    harness.wait_for(lambda: harness.status(handle) == Message.Status.HANDLED, timeout=30, message="redelivered")
    # Delivered twice, but its handler never failed: attempts count handler failures (the
    # history's record), so the broker's delivery count is no attempt spent.
    assert [attempt for attempt, _ in CALLS.of("orphan")] == [1]


def test_the_same_message_published_twice_is_handled_once(harness):
    started(harness)
    message = Do(key="twice")
    envelope = Envelope.for_message(message, qos=QoS.AT_LEAST_ONCE)
    history.store_outgoing(envelope, codec.to_payload(message), status=Message.Status.PENDING)
    outgoing = Outgoing(envelope, codec.encode(message))
    harness.mediator.transport.publish_blocking([outgoing])
    harness.mediator.transport.publish_blocking([outgoing])
    harness.wait_for(
        lambda: Message.objects.filter(pk=envelope.id, status=Message.Status.HANDLED).exists(), message="handled"
    )
    # Give a second copy every chance to arrive: a later message is handled after it would have been.
    harness.send(Do(key="after"))
    harness.wait_for(lambda: CALLS.of("after"), message="a later message")
    assert len(CALLS.of("twice")) == 1
    if harness.redelivers:
        # Dropped by the server's de-duplication (Nats-Msg-Id, Redis's SET NX key), not only
        # by the inbox: two deliveries in all.
        assert harness.deliveries_made() == 2


def test_scheduled_messages_are_handled_when_due_in_due_order(harness):
    started(harness)
    later = harness.send(Do(key="later"), countdown=1.2)
    sooner = harness.send(Do(key="sooner"), countdown=0.4)
    now = harness.send(Do(key="now"))
    harness.wait_for(
        lambda: all(harness.status(h) == Message.Status.HANDLED for h in (later, sooner, now)),
        timeout=30,
        message="all three handled",
    )
    order = sorted(("now", "sooner", "later"), key=lambda key: CALLS.of(key)[0][1])
    assert order == ["now", "sooner", "later"]
