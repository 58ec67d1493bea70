"""Bad input gets a 4xx with field errors, never a 500, and changes nothing."""

import pytest

from apps.mediator.models import Message
from apps.orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

VALID = {"customer_id": "c1", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**VALID, "lines": []}, "lines"),
        ({**VALID, "lines": "SKU-A"}, "lines"),
        ({**VALID, "lines": [{"sku": "SKU-A", "quantity": 0}]}, "lines"),
        ({**VALID, "lines": [{"sku": "SKU-A", "quantity": -3}]}, "lines"),
        ({**VALID, "lines": [{"sku": "SKU-A", "quantity": "many"}]}, "lines"),
        ({**VALID, "lines": [{"quantity": 1}]}, "lines"),
        ({**VALID, "lines": [5]}, "lines"),
        ({k: v for k, v in VALID.items() if k != "customer_id"}, "customer_id"),
        ({**VALID, "payment_token": ""}, "payment_token"),
        ([1, 2, 3], "non_field_errors"),
    ],
)
def test_invalid_order_bodies_get_400_with_the_field_named(api, catalogue, body, field):
    response = api.post("/api/orders/", body, format="json")

    assert response.status_code == 400, response.content
    assert field in response.json()
    assert Order.objects.count() == 0
    assert Message.objects.count() == 0


def test_unknown_sku_is_a_field_error_on_that_line(api, catalogue):
    body = {**VALID, "lines": [{"sku": "SKU-A", "quantity": 1}, {"sku": "NOPE", "quantity": 1}]}
    response = api.post("/api/orders/", body, format="json")

    assert response.status_code == 400
    assert response.json() == {"lines": [{}, {"sku": ["Unknown SKU 'NOPE'."]}]}
    assert Order.objects.count() == 0
    assert Message.objects.count() == 0  # the rolled-back request left no history and sent nothing


@pytest.mark.parametrize("raw", [b"{", b"not json", b"\xff\xfe", b'{"lines": [}'])
def test_malformed_json_is_400(api, catalogue, raw):
    response = api.post("/api/orders/", raw, content_type="application/json")
    assert response.status_code == 400


def test_unknown_order_is_404(api, db):
    assert api.get("/api/orders/01ZZZZZZZZZZZZZZZZZZZZZZZZ/").status_code == 404


def test_unknown_item_is_404(anon_api, db):
    assert anon_api.get("/api/inventory/items/NOPE/").status_code == 404


def test_writes_need_an_authenticated_user(anon_api, catalogue):
    assert anon_api.post("/api/orders/", VALID, format="json").status_code in (401, 403)
    item = {"sku": "SKU-Z", "name": "Z", "price": "1.00", "on_hand": 1}
    assert anon_api.post("/api/inventory/items/", item, format="json").status_code in (401, 403)


def test_only_users_with_add_item_create_items(api, staff_user, support_user, anon_api):
    item = {"sku": "SKU-Z", "name": "Zed", "price": "3.10", "on_hand": 7}
    assert api.post("/api/inventory/items/", item, format="json").status_code == 403
    anon_api.force_authenticate(staff_user)  # staff, without the permission
    assert anon_api.post("/api/inventory/items/", item, format="json").status_code == 403

    anon_api.force_authenticate(support_user)
    created = anon_api.post("/api/inventory/items/", item, format="json")
    assert created.status_code == 201
    detail = anon_api.get("/api/inventory/items/SKU-Z/").json()
    assert detail == {"sku": "SKU-Z", "name": "Zed", "price": "3.10", "on_hand": 7, "reserved": 0, "available": 7}
    duplicate = anon_api.post("/api/inventory/items/", item, format="json")
    assert duplicate.status_code == 400 and "sku" in duplicate.json()
    bad = anon_api.post("/api/inventory/items/", {"sku": "bad sku!", "price": "-1"}, format="json")
    assert bad.status_code == 400
    assert {"sku", "name", "price", "on_hand"} <= set(bad.json())


def test_token_authentication_works(anon_api, customer, catalogue):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=customer)
    anon_api.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert anon_api.post("/api/orders/", VALID, format="json").status_code == 202


@pytest.mark.parametrize("query", ["limit=18446744073709551616", "offset=18446744073709551616", "limit=-1", "offset=x"])
def test_absurd_paging_is_not_a_500(anon_api, catalogue, query):
    response = anon_api.get(f"/api/inventory/items/?{query}")
    assert response.status_code == 200
    assert len(response.json()["results"]) <= 1000
