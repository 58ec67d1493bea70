"""The order flow end to end in one process, over the in-memory transport."""

import itertools
from collections import Counter
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.inventory.models import Item
from apps.mediator import mediator
from apps.mediator.models import Delivery, Message
from apps.orders.contracts import OrderLineIn, PlaceOrder
from apps.orders.models import Order
from apps.payments.models import Payment

pytestmark = pytest.mark.django_db(transaction=True)


def place(api, lines, token="tok_visa"):
    return api.post("/api/orders/", {"customer_id": "cust-1", "lines": lines, "payment_token": token}, format="json")


def stock(sku):
    item = Item.objects.get(sku=sku)
    return item.on_hand, item.reserved


def test_happy_order_is_confirmed_with_stock_sold_and_one_captured_payment(api, catalogue):
    response = place(api, [{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-B", "quantity": 1}])

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "pending"
    assert Decimal(body["total"]) == Decimal("6.25")
    assert [(li["sku"], li["quantity"]) for li in body["lines"]] == [("SKU-A", 2), ("SKU-B", 1)]

    order = api.get(f"/api/orders/{body['id']}/").json()
    assert order["status"] == "confirmed"
    assert order["reason"] == ""
    assert stock("SKU-A") == (8, 0)  # sold: left the shelf, nothing held
    assert stock("SKU-B") == (4, 0)
    payments = api.get(f"/api/payments/?order_id={body['id']}").json()["results"]
    assert [(p["status"], Decimal(p["amount"])) for p in payments] == [("captured", Decimal("6.25"))]


def test_out_of_stock_order_is_cancelled_with_reason_and_no_payment(api, catalogue):
    body = place(api, [{"sku": "SKU-A", "quantity": 1}, {"sku": "SKU-RARE", "quantity": 2}]).json()

    order = api.get(f"/api/orders/{body['id']}/").json()
    assert order["status"] == "cancelled"
    assert order["reason"] == "out_of_stock"
    assert stock("SKU-A") == (10, 0)  # all or nothing: the available line was not held either
    assert stock("SKU-RARE") == (1, 0)
    assert not Payment.objects.filter(order_id=body["id"]).exists()


def test_declined_payment_cancels_and_releases_stock(api, catalogue):
    body = place(api, [{"sku": "SKU-B", "quantity": 3}], token="tok_declined").json()

    order = api.get(f"/api/orders/{body['id']}/").json()
    assert order["status"] == "cancelled"
    assert order["reason"] == "payment_declined"
    assert stock("SKU-B") == (5, 0)
    assert list(Payment.objects.filter(order_id=body["id"]).values_list("status", flat=True)) == ["declined"]


def test_flaky_provider_is_retried_until_the_payment_is_captured(api, catalogue):
    body = place(api, [{"sku": "SKU-A", "quantity": 1}], token="tok_flaky").json()

    assert Order.objects.get(pk=body["id"]).status == "confirmed"
    correlation_id = Order.objects.get(pk=body["id"]).correlation_id
    charge = Delivery.objects.get(message__type="payments.ChargePayment", message__correlation_id=correlation_id)
    assert charge.status == "succeeded"
    assert charge.attempts == 3
    assert [entry["outcome"] for entry in charge.attempt_log] == ["retrying", "retrying", "succeeded"]
    assert "provider timeout" in charge.attempt_log[0]["error"]
    assert Payment.objects.filter(order_id=body["id"], status="captured").count() == 1


def test_every_message_of_an_order_shares_its_correlation_id_and_links_to_its_cause(api, catalogue):
    body = place(api, [{"sku": "SKU-A", "quantity": 1}]).json()
    correlation_id = Order.objects.get(pk=body["id"]).correlation_id

    messages = {m.id: m for m in Message.objects.filter(correlation_id=correlation_id)}
    by_type = {m.type: m for m in messages.values()}
    assert Counter(m.type for m in messages.values()) == {
        "orders.PlaceOrder": 1,
        "orders.OrderPlaced": 1,
        "inventory.ReserveStock": 1,
        "inventory.StockReserved": 1,
        "payments.ChargePayment": 1,
        "payments.PaymentCaptured": 1,
        "orders.ConfirmOrder": 1,
        "orders.OrderConfirmed": 1,
        # No OrderSagaTimeout: each step's timer was dropped from the outbox when the step settled.
    }
    root = by_type["orders.PlaceOrder"]
    assert root.id == correlation_id and root.causation_id == ""
    chain = [
        "inventory.ReserveStock",
        "inventory.StockReserved",
        "payments.ChargePayment",
        "payments.PaymentCaptured",
        "orders.ConfirmOrder",
        "orders.OrderConfirmed",
    ]
    assert by_type["inventory.ReserveStock"].causation_id == root.id
    for cause, effect in itertools.pairwise(chain):
        assert by_type[effect].causation_id == by_type[cause].id, effect
    assert by_type["orders.OrderPlaced"].causation_id == root.id
    # Every message was handled except the un-subscribed OrderPlaced.
    assert {m.type for m in messages.values() if m.status != "handled"} == {"orders.OrderPlaced"}
    # 7 handled messages; OrderConfirmed has two subscribers (inventory commits stock, the saga completes).
    assert Delivery.objects.filter(message__correlation_id=correlation_id, status="succeeded").count() == 8


def test_an_executed_command_is_recorded_handled_with_its_delivery_and_nothing_to_claim(catalogue):
    """mediator.execute (the POST's PlaceOrder): its id is new, so no inbox claim and no status update."""
    command = PlaceOrder(customer_id="c1", lines=(OrderLineIn(sku="SKU-A", quantity=1),), payment_token="tok_visa")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        order = mediator.execute(command)

    statements = [q["sql"] for q in queries.captured_queries]
    assert not [s for s in statements if "pg_try_advisory_xact_lock" in s or s.startswith('UPDATE "mediator_message"')]
    row = Message.objects.get(pk=order.correlation_id)
    assert (row.type, row.status, row.causation_id) == ("orders.PlaceOrder", "handled", "")
    [delivery] = row.deliveries.all()
    assert (delivery.status, delivery.attempts, delivery.result["id"]) == ("succeeded", 1, order.id)
    assert [entry["outcome"] for entry in delivery.attempt_log] == ["succeeded"]
    assert delivery.finished_at >= delivery.started_at == delivery.first_started_at
