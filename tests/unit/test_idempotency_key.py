import pytest

from apps.orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"customer_id": "c1", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa"}


def test_same_key_and_body_return_the_same_order_once(api, catalogue):
    first = api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    again = api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-1")

    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["status"] == "pending"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert Order.objects.count() == 1


def test_same_key_with_another_body_is_a_conflict(api, catalogue):
    assert api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-2").status_code == 202
    other = {**BODY, "lines": [{"sku": "SKU-B", "quantity": 2}]}
    response = api.post("/api/orders/", other, format="json", HTTP_IDEMPOTENCY_KEY="k-2")

    assert response.status_code == 409
    assert "different request body" in response.json()["detail"]
    assert Order.objects.count() == 1


def test_keys_belong_to_their_user_and_must_be_sane(api, catalogue, staff_user, anon_api):
    assert api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="shared").status_code == 202
    anon_api.force_authenticate(staff_user)
    assert anon_api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="shared").status_code == 202
    assert Order.objects.count() == 2
    too_long = api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="x" * 300)
    assert too_long.status_code == 400 and "Idempotency-Key" in too_long.json()


def test_a_failed_request_does_not_burn_the_key(api, catalogue):
    bad = {**BODY, "lines": [{"sku": "NOPE", "quantity": 1}]}
    assert api.post("/api/orders/", bad, format="json", HTTP_IDEMPOTENCY_KEY="k-3").status_code == 400
    assert api.post("/api/orders/", BODY, format="json", HTTP_IDEMPOTENCY_KEY="k-3").status_code == 202
