"""The admin cannot corrupt state or leak secrets.

- Saving an item used to write back the stock counters its form was loaded with,
  undoing every reservation and sale since (an order took 3 of 10, a price change
  restored 10). Counters are read-only now; stock moves through "Adjust stock".
- Payment tokens are masked in every JSON the console shows; API keys are hidden
  in the token admin.
"""

from decimal import Decimal

import pytest
from rest_framework.authtoken.models import Token

from apps.inventory import services
from apps.inventory.contracts import StockLine
from apps.inventory.models import Item, StockAdjustment
from apps.mediator.models import Message

pytestmark = pytest.mark.django_db

INLINE = {
    "adjustments-TOTAL_FORMS": "0",
    "adjustments-INITIAL_FORMS": "0",
    "adjustments-MIN_NUM_FORMS": "0",
    "adjustments-MAX_NUM_FORMS": "1000",
}


@pytest.fixture
def ops(admin_client):
    return admin_client


def test_saving_an_item_while_orders_move_stock_keeps_their_counts(ops):
    item = Item.objects.create(sku="SKU-A", name="Apple", price=Decimal("2.50"), on_hand=10)
    page = f"/admin/inventory/item/{item.pk}/change/"
    assert ops.get(page).status_code == 200  # the operator opens the form: 10 on hand

    services.stock_reserve(order_id="o-1", lines=(StockLine(sku="SKU-A", quantity=3),))
    services.stock_commit(order_id="o-1")  # meanwhile an order took 3: 7 on hand
    services.stock_reserve(order_id="o-2", lines=(StockLine(sku="SKU-A", quantity=2),))

    # The stale counters are posted too, as a browser whose form still said 10 and 0 would.
    saved = ops.post(page, {"name": "Apple", "price": "2.75", "on_hand": "10", "reserved": "0", **INLINE})

    assert saved.status_code == 302, saved.content.decode()[:2000]
    item.refresh_from_db()
    assert (item.price, item.on_hand, item.reserved) == (Decimal("2.75"), 7, 2)


def test_stock_is_adjusted_with_an_audit_entry_and_never_below_what_is_reserved(ops):
    item = Item.objects.create(sku="SKU-A", name="Apple", price=Decimal("2.50"), on_hand=10)
    services.stock_reserve(order_id="o-1", lines=(StockLine(sku="SKU-A", quantity=4),))
    page = f"/admin/inventory/item/{item.pk}/adjust/"

    done = ops.post(page, {"delta": "5", "reason": "delivery 42"})
    assert done.status_code == 302
    item.refresh_from_db()
    assert (item.on_hand, item.reserved) == (15, 4)
    (entry,) = StockAdjustment.objects.all()
    assert (entry.delta, entry.on_hand_after, entry.reason, entry.actor) == (5, 15, "delivery 42", "admin:admin")

    refused = ops.post(page, {"delta": "-12", "reason": "stocktake"})
    assert refused.status_code == 200 and "fewer than the 4 reserved" in refused.content.decode()
    item.refresh_from_db()
    assert item.on_hand == 15 and StockAdjustment.objects.count() == 1


def test_a_staff_user_without_change_item_cannot_adjust(client, django_user_model):
    item = Item.objects.create(sku="SKU-A", name="Apple", price=Decimal("2.50"), on_hand=10)
    client.force_login(django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True))
    assert client.post(f"/admin/inventory/item/{item.pk}/adjust/", {"delta": "5", "reason": "x"}).status_code == 403
    item.refresh_from_db()
    assert item.on_hand == 10


@pytest.mark.django_db(transaction=True)  # the order flows after commit
def test_payment_tokens_and_api_keys_are_never_shown(ops, api, catalogue, customer):
    api.post(
        "/api/orders/",
        {"customer_id": "c", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa_secret"},
        format="json",
    )
    charge = Message.objects.get(type="payments.ChargePayment")
    html = ops.get(f"/admin/mediator/message/{charge.pk}/change/").content.decode()
    assert "tok_visa_secret" not in html and "(hidden)" in html

    key = Token.objects.create(user=customer).key
    listing = ops.get("/admin/authtoken/tokenproxy/").content.decode()
    assert key not in listing and f"{key[:4]}…(hidden)" in listing
    for page in ("change", "delete", "history"):
        response = ops.get(f"/admin/authtoken/tokenproxy/{customer.pk}/{page}/")
        assert response.status_code == 200 and key not in response.content.decode(), page
