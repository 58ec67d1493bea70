"""Sagas that cannot hang, replies that cannot be forged in, money that moves once.

- A pivot step whose command dies used to leave its saga `running` forever (cancel is
  refused at the pivot and no timer was re-armed): now it is `stuck`, visibly, and a
  replay of the dead letter completes it.
- A reply carrying a real order's correlation id but another order's id, or another
  amount, used to confirm the order: the saga now takes replies only for its own key.
- With history off, at-least-once handlers took no inbox claim: a charge past its
  timeout ran on while its retry charged again. The provider is now called once.
"""

import json
from decimal import Decimal

import pytest
from django.db import connection

from apps.mediator.core.envelope import Envelope
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Kind
from apps.mediator.models import Message, SagaState
from apps.mediator.servers.ports import wait_until
from apps.orders.models import Order
from apps.payments.models import Payment
from tests.integration.helpers import CONTEXTS, at_charge_step, final_status, js_call, place

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def _refuse_confirmation():
    """Make confirming any order fail in the database itself: a real, permanent-looking failure."""
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE OR REPLACE FUNCTION no_confirm() RETURNS trigger AS $$ BEGIN "
            "IF NEW.status = 'confirmed' THEN RAISE EXCEPTION 'confirmations are switched off'; END IF; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        cursor.execute(
            "CREATE TRIGGER no_confirm BEFORE UPDATE ON orders_order FOR EACH ROW EXECUTE FUNCTION no_confirm()"
        )


def _allow_confirmation():
    with connection.cursor() as cursor:
        cursor.execute("DROP TRIGGER IF EXISTS no_confirm ON orders_order")


def test_a_dead_pivot_makes_the_saga_stuck_and_a_replay_completes_it(api, catalogue, workers, settings):
    settings.ORDER_STEP_TIMEOUT = 2
    env = {"ORDER_STEP_TIMEOUT": "2", "CATGA_RETRY_BACKOFF": "0.05"}
    for context in CONTEXTS:
        workers.start(context, **env)
    _refuse_confirmation()
    try:
        order_id = place(api, [{"sku": "SKU-A", "quantity": 1}])
        saga = wait_until(
            lambda: SagaState.objects.filter(status=SagaState.Status.STUCK).first(),
            timeout=60,
            what="the saga to be stuck on its dead pivot",
        )
        assert saga.reason == "confirm_order is dead"
        assert Order.objects.get(pk=order_id).status == "pending"
        status = workers.run("catga_status")
        assert saga.correlation_id in status.stdout and "stuck sagas: 1" in status.stdout, status.stdout
    finally:
        _allow_confirmation()

    dead = Message.objects.get(type="orders.ConfirmOrder", status=Message.Status.DEAD)
    replayed = workers.run("replay", dead.pk)
    assert replayed.returncode == 0, replayed.stderr

    order = final_status(order_id)
    assert order.status == "confirmed"
    saga.refresh_from_db()
    assert saga.status == SagaState.Status.COMPLETED
    assert Payment.objects.filter(order_id=order_id, status="captured").count() == 1


def _publish_event(url: str, wire: str, body: dict, correlation_id: str) -> None:
    message_id = new_id()
    envelope = Envelope(id=message_id, type=wire, kind=Kind.EVENT, correlation_id=correlation_id, created_at=1.7e9)
    subject = f"catga.{wire.split('.')[0]}.evt.{wire.split('.')[1]}"

    async def send(nc, js):
        await js.publish(subject, json.dumps(body).encode(), headers=envelope.to_headers())

    js_call(url, send)


def test_a_forged_payment_capture_with_a_real_correlation_id_is_refused_by_the_saga(api, catalogue, workers):
    # No payments consumer: the victim's order waits at its charge step, unpaid.
    workers.start("orders")
    workers.start("inventory")
    victim = place(api, [{"sku": "SKU-A", "quantity": 2}])
    order = at_charge_step(victim)
    # Its correlation id is in every order response; the forger reuses it.
    forgeries = [
        {"order_id": "another-order", "payment_id": 1, "amount": str(order.total)},  # another order's key
        {"order_id": victim, "payment_id": 1, "amount": "0.01"},  # not what the order costs
    ]
    for body in forgeries:
        _publish_event(workers.nats_url, "payments.PaymentCaptured", body, order.correlation_id)

    def refused():
        state = SagaState.objects.get()
        return state if [e["event"] for e in state.step_log].count("refused_reply") == 2 else None

    state = wait_until(refused, what="both forgeries refused")
    assert state.status == SagaState.Status.RUNNING and state.current_step == 1
    assert Order.objects.get(pk=victim).status == "pending"


def test_with_history_off_a_charge_past_its_timeout_calls_the_provider_once(api, catalogue, workers, tmp_path):
    ledger = tmp_path / "provider.jsonl"
    env = {
        "CATGA_RECORD_HISTORY": "0",
        "CATGA_HANDLER_TIMEOUT": "1",
        "CATGA_RETRY_BACKOFF": "0.2",
        "FAKE_PROVIDER_LEDGER": str(ledger),
    }
    workers.start("orders", **env)
    workers.start("inventory", **env)
    workers.start("payments", FAKE_PROVIDER_DELAY="3", **env)
    order = final_status(place(api, [{"sku": "SKU-A", "quantity": 1}]), timeout=60)

    assert order.status == "confirmed"
    calls = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [(c["key"], c["charged"]) for c in calls] == [(f"charge:{order.id}", True)], calls
    assert Payment.objects.get(order_id=order.id).amount == Decimal("2.50")


def test_a_refund_for_a_confirmed_order_is_refused(api, catalogue, workers):
    for context in CONTEXTS:
        workers.start(context)
    order = final_status(place(api, [{"sku": "SKU-A", "quantity": 1}]))
    assert order.status == "confirmed"
    envelope = Envelope(
        id=new_id(), type="payments.RefundPayment", kind=Kind.COMMAND, correlation_id=new_id(), created_at=1.7e9
    )

    async def send(nc, js):
        body = json.dumps({"order_id": order.id, "reason": "forged"}).encode()
        await js.publish("catga.payments.cmd.RefundPayment", body, headers=envelope.to_headers())

    js_call(workers.nats_url, send)
    dead = wait_until(
        lambda: Message.objects.filter(pk=envelope.id, status=Message.Status.DEAD).first(),
        what="the forged refund dead-lettered",
    )
    assert "refund refused" in dead.deliveries.get().error
    assert Payment.objects.get(order_id=order.id).status == "captured"
