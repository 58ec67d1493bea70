"""The message history admin: list, search, filters, one message's page, a conversation."""

import datetime as dt
import re

import pytest
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.mediator.console import conversation as admin_conversation
from apps.mediator.console.paginator import CappedCountPaginator
from apps.mediator.core.ids import new_id
from apps.mediator.models import Delivery, Message
from apps.orders.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

LIST = "/admin/mediator/message/"


def place(api, token="tok_visa", sku="SKU-A"):
    response = api.post(
        "/api/orders/",
        {"customer_id": "cust-1", "lines": [{"sku": sku, "quantity": 1}], "payment_token": token},
        format="json",
    )
    assert response.status_code == 202, response.content
    return Order.objects.get(pk=response.json()["id"])


@pytest.fixture
def support(django_user_model):
    """A support person: staff, allowed to view the history and orders, nothing else."""
    user = django_user_model.objects.create_user("support", password="pw-support-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_message", "view_delivery", "view_order"]))
    return user


@pytest.fixture
def support_client(client, support):
    client.force_login(support)
    return client


def conversation_size(order) -> int:
    return Message.objects.filter(correlation_id=order.correlation_id).count()


def listed_ids(response) -> list[str]:
    return [row.pk for row in response.context["cl"].result_list]


def test_the_list_shows_type_kind_context_status_attempts_duration_and_created(api, catalogue, support_client):
    order = place(api, token="tok_flaky")  # ChargePayment takes three attempts

    response = support_client.get(LIST)

    assert response.status_code == 200
    html = response.content.decode()
    for header in ["Message (type, id)", "Kind", "Context", "Status", "Attempts", "Handling time", "Created (UTC)"]:
        assert f">{header}<" in html, header
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")
    (row,) = [tr for tr in html.split("<tr")[1:] if charge.pk in tr]
    assert "payments.ChargePayment" in row and "command" in row and "payments" in row
    assert 'class="catga-status catga-status-handled" style="color:#1a7f37"' in row
    assert '<td class="field-attempts">3</td>' in row
    assert re.search(r'<td class="field-duration">[\d.]+ ms</td>', row)
    assert len(listed_ids(response)) == Message.objects.count() >= 8


def test_search_by_order_id_finds_every_message_of_that_order_and_no_other(api, catalogue, support_client):
    order = place(api)
    other = place(api, sku="SKU-B")

    response = support_client.get(LIST, {"q": order.id})

    ids = listed_ids(response)
    assert len(ids) == conversation_size(order) >= 8
    assert set(Message.objects.filter(pk__in=ids).values_list("correlation_id", flat=True)) == {order.correlation_id}
    assert not Message.objects.filter(pk__in=ids, correlation_id=other.correlation_id).exists()


def test_search_by_message_id_or_correlation_id_exactly(api, catalogue, support_client):
    order = place(api)
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")

    by_correlation = listed_ids(support_client.get(LIST, {"q": order.correlation_id}))
    by_message = listed_ids(support_client.get(LIST, {"q": charge.pk.lower()}))  # pasted in lower case
    by_prefix = listed_ids(support_client.get(LIST, {"q": charge.pk[:20]}))

    assert len(by_correlation) == conversation_size(order)
    # The message itself, and the message it caused (an id also matches as a causation id).
    assert charge.pk in by_message
    assert {m.causation_id for m in Message.objects.filter(pk__in=by_message) if m.pk != charge.pk} == {charge.pk}
    assert by_prefix == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"kind": "event"}, {"orders.OrderPlaced", "inventory.StockReserved", "orders.OrderCancelled"}),
        ({"context": "payments"}, {"payments.ChargePayment", "payments.PaymentDeclined"}),
        ({"type": "inventory.ReserveStock"}, {"inventory.ReserveStock"}),
        ({"status": "published"}, {"orders.OrderPlaced", "orders.OrderCancelled"}),
    ],
)
def test_filters_narrow_the_list(api, catalogue, support_client, params, expected):
    place(api, token="tok_declined", sku="SKU-B")  # reserve, charge (declined), release, cancel

    response = support_client.get(LIST, params)

    types = set(Message.objects.filter(pk__in=listed_ids(response)).values_list("type", flat=True))
    assert types >= expected
    for field, value in params.items():
        assert set(Message.objects.filter(pk__in=listed_ids(response)).values_list(field, flat=True)) == {value}


def test_the_date_filter_offers_ranges_and_applies_them(api, catalogue, support_client):
    place(api)
    response = support_client.get(LIST)
    assert "Today" in response.content.decode() and "Past 7 days" in response.content.decode()

    future = support_client.get(LIST, {"created_at__gte": "2999-01-01 00:00:00+00:00"})

    assert listed_ids(future) == []


def test_filter_choices_cost_no_query_and_the_list_never_loads_payloads(api, catalogue, support_client):
    place(api)

    with CaptureQueriesContext(connection) as queries:
        response = support_client.get(LIST)

    sql = [q["sql"] for q in queries.captured_queries]
    assert response.status_code == 200
    assert not [s for s in sql if "DISTINCT" in s.upper()], "filter choices come from code, not SELECT DISTINCT"
    assert not [s for s in sql if '"payload"' in s], "the list defers the payload"
    assert [s for s in sql if "COUNT(" in s.upper() and "LIMIT" in s.upper()], "the count is capped"


def test_the_capped_paginator_counts_no_further_than_its_horizon(api, catalogue):
    place(api)
    place(api)
    queryset = Message.objects.all()
    rows = queryset.count()

    small = CappedCountPaginator(queryset, 5, horizon=10)
    large = CappedCountPaginator(queryset, 5, horizon=100)

    assert rows > 11
    assert small.count == 11 and small.capped and small.counted == 10
    assert large.count == rows and not large.capped
    assert small.num_pages == 3 and list(small.page(3).object_list)  # the page past the horizon still opens


def test_the_list_says_more_than_when_the_count_is_capped(api, catalogue, support_client, monkeypatch):
    monkeypatch.setattr("apps.mediator.console.common.horizon_for", lambda page, per_page: 5)
    place(api)

    html = support_client.get(LIST).content.decode()

    assert re.search(r"more than 5\s+messages", html)


def test_a_message_page_shows_payload_headers_attempts_error_traceback_cause_and_consequences(
    api, catalogue, support_client
):
    order = place(api, token="tok_flaky")
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")
    cause = Message.objects.get(pk=charge.causation_id)
    captured = Message.objects.get(causation_id=charge.pk)
    Delivery.objects.filter(message=charge).update(traceback="Traceback (most recent call last):\n  boom")

    response = support_client.get(f"{LIST}{charge.pk}/change/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "&quot;order_id&quot;: &quot;" + order.id in html  # payload, indented JSON
    assert '<pre class="catga-json">{\n  &quot;' in html
    assert "Headers" in html
    assert "payments:apps.payments.handlers.charge_payment" in html
    assert html.count('<tr class="attempt-retrying">') == 2 and html.count('<tr class="attempt-succeeded">') == 1
    assert "provider timeout (attempt 1)" in html
    assert "Traceback (most recent call last):\n  boom" in html
    assert f'href="/admin/mediator/message/{cause.pk}/change/">{cause.type}</a>' in html
    assert f'href="/admin/mediator/message/{captured.pk}/change/">{captured.type}</a>' in html
    assert f'href="/admin/mediator/message/conversation/{order.correlation_id}/"' in html


def test_a_message_nobody_handled_says_so(api, catalogue, support_client):
    order = place(api)
    placed = Message.objects.get(correlation_id=order.correlation_id, type="orders.OrderPlaced")

    html = support_client.get(f"{LIST}{placed.pk}/change/").content.decode()

    assert "No handler has run for this message (an event nobody here subscribes to)" in html


def test_the_conversation_is_a_causation_tree_with_a_timeline(api, catalogue, support_client):
    order = place(api, token="tok_declined", sku="SKU-B")

    response = support_client.get(f"{LIST}conversation/{order.correlation_id}/")

    assert response.status_code == 200
    rows = response.context["conversation"].rows
    by_type = {row.message.type: row for row in rows}
    assert rows[0].message.type == "orders.PlaceOrder" and rows[0].depth == 0
    for row in rows[1:]:
        cause = next(r for r in rows if r.message.pk == row.message.causation_id)
        assert row.depth == cause.depth + 1
        assert rows.index(cause) < rows.index(row), "a cause comes before its consequences"
    assert by_type["payments.PaymentDeclined"].depth == by_type["payments.ChargePayment"].depth + 1
    assert len(rows) == Message.objects.filter(correlation_id=order.correlation_id).count()
    handled = [r for r in rows if r.message.status == "handled"]
    assert handled and all(r.sent <= r.picked_up <= r.finished for r in handled)
    assert all(0 <= r.offset <= 100 and r.offset + r.wait + r.work <= 100.001 for r in rows)
    html = response.content.decode()
    assert html.count('class="catga-row') == len(rows)
    assert 'class="work status-handled"' in html


def test_an_order_id_message_id_or_search_form_leads_to_its_conversation(api, catalogue, support_client):
    order = place(api)
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")
    target = f"{LIST}conversation/{order.correlation_id}/"

    assert support_client.get(f"{LIST}conversation/{order.id}/").url == target
    assert support_client.get(f"{LIST}conversation/{charge.pk}/").url == target
    assert support_client.get(f"{LIST}conversation/", {"q": order.id}).url == target
    missing = support_client.get(f"{LIST}conversation/", {"q": "NOPE"})
    assert missing.status_code == 200 and "Nothing in the history matches" in missing.content.decode()


def test_a_conversation_whose_root_was_pruned_still_shows_as_a_forest(api, catalogue):
    order = place(api)
    size = conversation_size(order)
    children = set(Message.objects.filter(causation_id=order.correlation_id).values_list("pk", flat=True))
    Message.objects.filter(pk=order.correlation_id).delete()

    conversation = admin_conversation.load(order.correlation_id)

    roots = {row.message.pk for row in conversation.rows if row.depth == 0}
    assert roots == children and {"orders.OrderPlaced", "inventory.ReserveStock"} <= {
        row.message.type for row in conversation.rows if row.depth == 0
    }
    assert len(conversation.rows) == size - 1


def test_the_conversation_costs_a_fixed_number_of_queries(api, catalogue, support_client, django_assert_num_queries):
    order = place(api)
    support_client.get(f"{LIST}conversation/{order.correlation_id}/")  # warm the session

    # session, user, permissions (2), resolve, messages, deliveries
    with django_assert_num_queries(7):
        support_client.get(f"{LIST}conversation/{order.correlation_id}/")


def test_the_order_admin_links_to_its_conversation(api, catalogue, support_client):
    order = place(api)

    html = support_client.get(f"/admin/orders/order/{order.id}/change/").content.decode()

    assert f'href="/admin/mediator/message/conversation/{order.correlation_id}/"' in html


def test_the_admin_index_links_the_console_for_those_who_may_see_it(support_client, client, django_user_model):
    html = support_client.get("/admin/").content.decode()
    assert 'href="/admin/mediator/message/dashboard/"' in html

    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    client.force_login(clerk)
    assert 'href="/admin/mediator/message/dashboard/"' not in client.get("/admin/").content.decode()


def test_the_history_is_read_only(api, catalogue, support_client, admin_client):
    order = place(api)

    assert admin_client.get(f"{LIST}add/").status_code == 403
    assert admin_client.post(f"{LIST}{order.correlation_id}/delete/").status_code == 403
    assert Message.objects.filter(pk=order.correlation_id).exists()


def test_non_staff_and_staff_without_permission_are_refused(client, django_user_model, api, catalogue):
    order = place(api)
    customer = django_user_model.objects.get(username="customer")
    clerk = django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True)
    pages = [LIST, f"{LIST}{order.correlation_id}/change/", f"{LIST}conversation/{order.correlation_id}/"]

    client.force_login(customer)
    for page in pages:
        response = client.get(page)
        assert response.status_code == 302 and "/admin/login/" in response.url, page
    client.force_login(clerk)
    for page in pages:
        assert client.get(page).status_code == 403, page


def test_the_delivery_list_filters_by_context_and_finds_a_conversation(api, catalogue, support_client):
    order = place(api)
    place(api)

    with CaptureQueriesContext(connection) as queries:
        response = support_client.get("/admin/mediator/delivery/", {"q": order.correlation_id.lower()})
    by_context = support_client.get("/admin/mediator/delivery/", {"context": "payments"})

    found = list(response.context["cl"].result_list)
    assert len(found) == Delivery.objects.filter(message__correlation_id=order.correlation_id).count() >= 7
    assert {d.message.correlation_id for d in found} == {order.correlation_id}
    assert {d.context for d in by_context.context["cl"].result_list} == {"payments"}
    assert not [q for q in queries.captured_queries if "DISTINCT" in q["sql"].upper() or '"traceback"' in q["sql"]]


def test_a_scheduled_message_in_a_conversation_says_when_it_is_due(api, catalogue, support_client):
    order = place(api)
    root = Message.objects.get(pk=order.correlation_id)
    due = root.created_at + dt.timedelta(minutes=5)
    Message.objects.create(
        id=new_id(),
        type="orders.ConfirmOrder",
        kind="command",
        context="orders",
        correlation_id=order.correlation_id,
        causation_id=root.pk,
        qos="at_least_once",
        status="pending",
        payload={"order_id": order.id},
        created_at=root.created_at,
        available_at=due,
    )

    html = support_client.get(f"{LIST}conversation/{order.correlation_id}/").content.decode()

    assert f"due {due.astimezone(dt.UTC):%H:%M:%S} UTC" in html
