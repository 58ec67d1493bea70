"""Doors a production deployment must close: ownership, CSRF, body size, secrets in logs."""

import logging

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db(transaction=True)

BODY = {"customer_id": "c1", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa"}


def test_a_customer_sees_and_cancels_only_their_own_orders(
    api, catalogue, django_user_model, anon_api, staff_user, support_user
):
    order_id = api.post("/api/orders/", BODY, format="json").json()["id"]
    other = django_user_model.objects.create_user("mallory", password="pw-mallory-123")
    anon_api.force_authenticate(other)

    assert anon_api.get(f"/api/orders/{order_id}/").status_code == 404
    assert anon_api.post(f"/api/orders/{order_id}/cancel/").status_code == 404
    assert anon_api.get(f"/api/payments/?order_id={order_id}").json()["results"] == []
    assert anon_api.get("/api/payments/").status_code == 403  # customers must name one of their orders

    assert api.get(f"/api/orders/{order_id}/").status_code == 200
    assert len(api.get(f"/api/payments/?order_id={order_id}").json()["results"]) == 1
    # is_staff alone is the admin login, nothing more: no one else's order, no payments list.
    anon_api.force_authenticate(staff_user)
    assert anon_api.get(f"/api/orders/{order_id}/").status_code == 404
    assert anon_api.post(f"/api/orders/{order_id}/cancel/").status_code == 404
    assert anon_api.get("/api/payments/").status_code == 403
    assert (
        anon_api.post("/api/inventory/items/", {"sku": "S", "name": "S", "price": "1", "on_hand": 1}).status_code == 403
    )
    # Django's model permissions grant it.
    anon_api.force_authenticate(support_user)
    assert anon_api.get(f"/api/orders/{order_id}/").status_code == 200
    assert anon_api.get("/api/payments/").status_code == 200


def test_session_writes_need_a_csrf_token(customer, catalogue):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(customer)
    refused = browser.post("/api/orders/", BODY, content_type="application/json")
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["detail"]

    browser.get("/admin/login/")  # sets the CSRF cookie, as any page with a form does
    token = browser.cookies["csrftoken"].value
    accepted = browser.post("/api/orders/", BODY, content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 202


def test_an_oversized_body_is_refused_before_parsing(api, catalogue, settings):
    huge = {**BODY, "customer_id": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 10)}
    response = api.post("/api/orders/", huge, format="json")
    assert response.status_code == 400


def test_the_admin_needs_staff(client, customer, staff_user):
    assert client.get("/admin/").status_code == 302
    client.force_login(customer)
    assert client.get("/admin/").status_code == 302  # back to the login page
    client.force_login(staff_user)
    assert client.get("/admin/").status_code == 200


def test_nats_credentials_never_reach_the_logs(caplog, settings):
    import asyncio

    from apps.mediator.transports.nats import connection

    settings.CATGA = {**settings.CATGA, "NATS_URL": "nats://app:s3cret-pass@127.0.0.1:1", "NATS_TOKEN": "t0ken-value"}
    with caplog.at_level(logging.DEBUG), pytest.raises(ConnectionError) as failure:
        asyncio.run(connection.connect("test", attempts=1))
    logged = caplog.text + str(failure.value)
    assert "127.0.0.1:1" in logged
    assert "s3cret-pass" not in logged and "t0ken-value" not in logged


@pytest.mark.parametrize(
    "path",
    ["/api/inventory/items/%00/", "/api/orders/%00/", "/api/orders/%00/cancel/", "/api/payments/?order_id=%00"],
)
def test_nul_in_a_url_is_a_400_not_a_500(api, catalogue, path):
    response = api.post(path) if path.endswith("cancel/") else api.get(path)
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


def test_hostile_json_bodies_are_400s_with_the_reason(api, catalogue):
    deep = '{"customer_id": ' + '{"a": ' * 5000 + "1" + "}" * 5000 + ', "lines": [], "payment_token": "t"}'
    nul = '{"customer_id": "c\\u0000", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa"}'
    for body, reason in ((deep, "nested deeper"), (nul, "NUL"), ('{"customer_id": NaN}', "NaN")):
        response = api.post("/api/orders/", body, content_type="application/json")
        assert response.status_code == 400, (reason, response.content[:200])
        assert reason in response.json()["detail"]


def test_an_order_total_past_what_the_database_holds_is_a_field_error(api, catalogue, django_user_model):
    from decimal import Decimal

    from apps.inventory.models import Item

    Item.objects.create(sku="SKU-GOLD", name="Gold", price=Decimal("9999999999.99"), on_hand=10_000)
    body = {**BODY, "lines": [{"sku": "SKU-GOLD", "quantity": 2}]}
    response = api.post("/api/orders/", body, format="json")
    assert response.status_code == 400
    assert "total" in response.json()["lines"][0]
