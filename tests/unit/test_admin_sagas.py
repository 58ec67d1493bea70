"""Sagas in the admin: the list with filters and search, one saga's steps and timeline, read-only."""

import re
import time

import pytest
from django.contrib.auth.models import Permission

from apps.mediator.models import Message, SagaState
from apps.mediator.runtime import get_mediator
from apps.orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

SAGAS = "/admin/mediator/sagastate/"


def place(api, token="tok_visa", sku="SKU-A", quantity=1):
    response = api.post(
        "/api/orders/",
        {"customer_id": "cust-1", "lines": [{"sku": sku, "quantity": quantity}], "payment_token": token},
        format="json",
    )
    assert response.status_code == 202, response.content
    return Order.objects.get(pk=response.json()["id"])


def saga_of(order) -> SagaState:
    return SagaState.objects.get(correlation_id=order.correlation_id)


@pytest.fixture
def support(django_user_model):
    user = django_user_model.objects.create_user("support", password="pw-support-123", is_staff=True)
    codenames = ["view_message", "view_delivery", "view_order", "view_sagastate"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def support_client(client, support):
    client.force_login(support)
    return client


def listed(response) -> list[int]:
    return [state.pk for state in response.context["cl"].result_list]


def test_the_list_shows_name_status_step_reason_and_times(api, catalogue, support_client):
    happy = saga_of(place(api))
    declined = saga_of(place(api, token="tok_declined"))

    response = support_client.get(SAGAS)

    assert response.status_code == 200
    html = response.content.decode()
    for header in ["Saga (name, correlation id)", "Status", "Current step", "Reason", "Created (UTC)", "Updated (UTC)"]:
        assert f">{header}<" in html, header
    rows = {state.pk: tr for tr in html.split("<tr")[1:] for state in (happy, declined) if state.correlation_id in tr}
    assert "OrderSaga" in rows[happy.pk] and "catga-saga-completed" in rows[happy.pk]
    assert re.search(r'3/3 <span class="catga-step-name">confirm_order</span>', rows[happy.pk])
    assert "catga-saga-failed" in rows[declined.pk] and "payment_declined" in rows[declined.pk]
    assert re.search(r'2/3 <span class="catga-step-name">charge_payment</span>', rows[declined.pk])
    assert f'href="/admin/mediator/message/conversation/{happy.correlation_id}/"' in rows[happy.pk]


def test_filters_by_status_and_name_and_finds_by_order_message_or_correlation_id(api, catalogue, support_client):
    happy_order = place(api)
    happy = saga_of(happy_order)
    out_of_stock = saga_of(place(api, sku="SKU-RARE", quantity=5))

    assert listed(support_client.get(SAGAS, {"status__exact": "failed"})) == [out_of_stock.pk]
    assert listed(support_client.get(SAGAS, {"status__exact": "completed", "name": "OrderSaga"})) == [happy.pk]
    assert listed(support_client.get(SAGAS, {"name": "NoSuchSaga"})) == []
    html = support_client.get(SAGAS).content.decode()
    assert '?name=OrderSaga"' in html and '?status__exact=compensating"' in html  # choices from code

    charge = Message.objects.get(correlation_id=happy.correlation_id, type="payments.ChargePayment")
    for term in (happy_order.id, happy.correlation_id, charge.pk, charge.pk.lower()):
        assert listed(support_client.get(SAGAS, {"q": term})) == [happy.pk], term
    assert listed(support_client.get(SAGAS, {"q": "01ZZZZZZZZZZZZZZZZZZZZZZZZ"})) == []


def test_a_compensated_saga_shows_its_steps_and_a_timeline_with_the_compensation_marked(api, catalogue, support_client):
    order = place(api, token="tok_declined")
    state = saga_of(order)

    response = support_client.get(f"{SAGAS}{state.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    steps = [(s.name, s.state) for s in response.context["steps"]]
    assert steps == [("reserve_stock", "compensated"), ("charge_payment", "failed"), ("confirm_order", "not_reached")]
    assert "completed, then compensated" in html and "point of no return" in html
    events = [(e.step_name, e.event) for e in response.context["events"]]
    assert events == [
        ("reserve_stock", "started"),
        ("reserve_stock", "completed"),
        ("charge_payment", "started"),
        ("charge_payment", "failed"),
        ("reserve_stock", "compensating"),
    ]
    rows = re.findall(r'<tr class="catga-saga-event event-(\w+)( catga-compensation)?"', html)
    assert rows == [(event, " catga-compensation" if event == "compensating" else "") for _, event in events]
    release = Message.objects.get(correlation_id=order.correlation_id, type="inventory.ReleaseStock")
    assert f'href="/admin/mediator/message/{release.pk}/change/">inventory.ReleaseStock</a>' in html
    assert "payment_declined" in html  # the failed step's detail and the saga's reason
    assert f'href="/admin/mediator/message/conversation/{order.correlation_id}/"' in html
    assert "&quot;token&quot;: &quot;•••• (hidden)&quot;" in html and "tok_declined" not in html


def test_a_timed_out_step_is_shown_as_such(api, catalogue, support_client, monkeypatch, settings):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    order = place(api)
    get_mediator().transport.run_due(now=time.time() + settings.ORDER_STEP_TIMEOUT + 1)

    response = support_client.get(f"{SAGAS}{saga_of(order).pk}/change/")

    assert [s.state for s in response.context["steps"]] == ["compensated", "timed_out", "not_reached"]
    assert "step timed out" in response.content.decode()


def test_a_running_saga_shows_the_step_in_progress(api, catalogue, support_client, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    state = saga_of(place(api))

    response = support_client.get(f"{SAGAS}{state.pk}/change/")

    assert [s.state for s in response.context["steps"]] == ["completed", "running", "not_reached"]
    assert "catga-saga-running" in response.content.decode()


def test_the_conversation_and_the_order_page_link_to_the_saga(api, catalogue, support_client):
    order = place(api)
    url = f"{SAGAS}{saga_of(order).pk}/change/"

    conversation = support_client.get(f"/admin/mediator/message/conversation/{order.correlation_id}/")
    assert f'href="{url}"' in conversation.content.decode()
    order_page = support_client.get(f"/admin/orders/order/{order.id}/change/")
    assert f'href="{url}"' in order_page.content.decode()
    assert 'href="/admin/mediator/sagastate/"' in support_client.get("/admin/").content.decode()


def test_sagas_are_read_only_and_need_their_view_permission(api, catalogue, client, django_user_model, admin_client):
    state = saga_of(place(api))
    assert admin_client.get(f"{SAGAS}add/").status_code == 403
    assert admin_client.post(f"{SAGAS}{state.pk}/delete/").status_code == 403
    assert admin_client.post(f"{SAGAS}{state.pk}/change/", {"status": "failed"}).status_code == 403
    assert SagaState.objects.get(pk=state.pk).status == "completed"

    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    clerk.user_permissions.set(Permission.objects.filter(codename="view_message"))
    client.force_login(clerk)
    assert client.get(SAGAS).status_code == 403
    assert client.get(f"{SAGAS}{state.pk}/change/").status_code == 403
    conversation = client.get(f"/admin/mediator/message/conversation/{state.correlation_id}/").content.decode()
    assert SAGAS not in conversation  # no link to what they may not open


def test_the_pages_cost_a_bounded_number_of_queries(api, catalogue, support_client, django_assert_max_num_queries):
    orders = [place(api), place(api, token="tok_declined"), place(api, sku="SKU-RARE", quantity=5)]
    state = saga_of(orders[1])
    support_client.get(SAGAS)  # warm the session

    # session, user, permissions (2), the capped count, the page
    with django_assert_max_num_queries(6):
        assert support_client.get(SAGAS).status_code == 200
    # session, user, permissions (2), the saga, the messages of its log (+ the content type, once per process)
    with django_assert_max_num_queries(7):
        assert support_client.get(f"{SAGAS}{state.pk}/change/").status_code == 200
