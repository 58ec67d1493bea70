"""Dead letters in the admin: the list with reasons, replay through a confirmation page, permissions, audit."""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages

from apps.mediator.console import dead_letters as admin_dead_letters
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import QoS
from apps.mediator.models import Delivery, Message
from apps.mediator.runtime import get_mediator
from apps.mediator.storage import replay
from apps.orders.models import Order
from apps.payments.contracts import ChargePayment

pytestmark = pytest.mark.django_db(transaction=True)

DEAD = "/admin/mediator/deadletter/"
VIEW = ["view_message", "view_delivery", "view_order", "view_sagastate"]


def place(api, token="tok_visa", sku="SKU-A"):
    response = api.post(
        "/api/orders/",
        {"customer_id": "cust-1", "lines": [{"sku": sku, "quantity": 1}], "payment_token": token},
        format="json",
    )
    assert response.status_code == 202, response.content
    return Order.objects.get(pk=response.json()["id"])


def stalled_order(api, monkeypatch):
    """An order whose charge died after its retries (the provider was down); its saga waits on it."""
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")
    order = place(api)
    monkeypatch.delenv("FAKE_PROVIDER_OUTAGE")
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")
    assert charge.status == "dead" and order.status == "pending"
    return order, charge


def undecodable() -> Message:
    envelope = Envelope.for_message(ChargePayment(order_id="o-1", amount="1.00", token="t"), qos=QoS.AT_LEAST_ONCE)
    get_mediator().dispatcher.handle(envelope, b"\x00\x01 not json")
    return Message.objects.get(pk=envelope.id)


def staff(django_user_model, username, codenames):
    user = django_user_model.objects.create_user(username, password=f"pw-{username}-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def support(django_user_model):
    """May read the history, may not replay."""
    return staff(django_user_model, "support", VIEW)


@pytest.fixture
def ops(django_user_model):
    """May read and replay."""
    return staff(django_user_model, "ops", [*VIEW, "replay_message"])


@pytest.fixture
def ops_client(client, ops):
    client.force_login(ops)
    return client


def notes(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def choose_replay(client, ids, *, confirm=False, query=""):
    data = {"action": "replay_selected", "_selected_action": ids}
    if confirm:
        data["post"] = "yes"
    else:
        data["index"] = "0"  # the button of the changelist's action bar
    return client.post(DEAD + query, data)


def test_the_list_holds_only_dead_messages_with_their_reason(api, catalogue, monkeypatch, ops_client):
    _order, charge = stalled_order(api, monkeypatch)
    broken = undecodable()
    place(api)  # a happy order: nothing of it is dead

    response = ops_client.get(DEAD)

    assert response.status_code == 200
    listed = [m.pk for m in response.context["cl"].result_list]
    assert sorted(listed) == sorted([charge.pk, broken.pk])
    html = response.content.decode()
    (charge_row,) = [tr for tr in html.split("<tr")[1:] if charge.pk in tr]
    assert "payments.ChargePayment" in charge_row
    assert "TransientError: provider outage" in charge_row
    assert '<td class="field-attempts">5</td>' in charge_row
    (broken_row,) = [tr for tr in html.split("<tr")[1:] if broken.pk in tr]
    assert "(decode)" in broken_row and "undecodable body" in broken_row and "cannot be replayed" in broken_row
    assert 'name="action"' in html and "Replay selected dead letters" in html


def test_the_list_filters_and_finds_by_order_id(api, catalogue, monkeypatch, ops_client):
    order, charge = stalled_order(api, monkeypatch)
    broken = undecodable()

    by_order = ops_client.get(DEAD, {"q": order.id}).context["cl"].result_list
    assert [m.pk for m in by_order] == [charge.pk]
    by_context = ops_client.get(DEAD, {"context": "payments", "type": "payments.ChargePayment"})
    assert {m.pk for m in by_context.context["cl"].result_list} == {charge.pk, broken.pk}
    assert [m.pk for m in ops_client.get(DEAD, {"context": "orders"}).context["cl"].result_list] == []


def test_replay_asks_first_then_goes_through_the_replay_service_and_is_audited(api, catalogue, monkeypatch, ops_client):
    order, charge = stalled_order(api, monkeypatch)

    page = choose_replay(ops_client, [charge.pk])

    assert page.status_code == 200
    assert page.templates[0].name == "admin/mediator/deadletter/replay_confirmation.html"
    html = page.content.decode()
    assert charge.pk in html and "TransientError: provider outage" in html and "admin:ops" in html
    assert f'<input type="hidden" name="_selected_action" value="{charge.pk}">' in html
    assert 'href="/admin/mediator/deadletter/"' in html  # "No, take me back"
    assert Message.objects.get(pk=charge.pk).status == "dead", "nothing happens before confirming"

    done = choose_replay(ops_client, [charge.pk], confirm=True)

    assert done.status_code == 302 and done.url == DEAD
    assert Order.objects.get(pk=order.pk).status == "confirmed"
    charge.refresh_from_db()
    assert charge.status == "handled"
    (replayed,) = charge.headers["replays"]
    assert replayed["by"] == "admin:ops" and replayed["at"]
    delivery = Delivery.objects.get(message=charge)
    assert [e["outcome"] for e in delivery.attempt_log][-2:] == ["replayed", "succeeded"]
    assert delivery.attempt_log[-2]["error"] == "replayed by admin:ops"
    ((level, text),) = notes(done)
    assert level == "success" and text.startswith(f"Replayed payments.ChargePayment {charge.pk}: queued again")
    assert text.endswith("now handled.")


def test_the_message_page_shows_the_replay_history_and_a_replay_button_while_dead(
    api, catalogue, monkeypatch, ops_client
):
    _order, charge = stalled_order(api, monkeypatch)
    page = f"/admin/mediator/message/{charge.pk}/change/"

    html = ops_client.get(page).content.decode()
    assert f'href="/admin/mediator/deadletter/{charge.pk}/replay/"' in html
    assert "never replayed" in html

    replay.replay([charge.pk], actor="admin:someone-else", publish=get_mediator().transport.publish)
    html = ops_client.get(page).content.decode()

    assert f'href="/admin/mediator/deadletter/{charge.pk}/replay/"' not in html  # handled now
    assert 'id="catga-replays"' in html and "admin:someone-else" in html and f"{charge.pk}.replay.1" in html
    assert "replayed by admin:someone-else" in html  # in the delivery's attempt log


def test_one_message_is_replayed_from_its_page_after_confirming(api, catalogue, monkeypatch, ops_client):
    order, charge = stalled_order(api, monkeypatch)
    url = f"{DEAD}{charge.pk}/replay/"

    page = ops_client.get(url)
    assert page.status_code == 200 and "Replay this dead letter?" in page.content.decode()
    assert f'href="/admin/mediator/message/{charge.pk}/change/"' in page.content.decode()  # cancel

    done = ops_client.post(url, {"post": "yes"})

    assert done.status_code == 302 and done.url == f"/admin/mediator/message/{charge.pk}/change/"
    assert Order.objects.get(pk=order.pk).status == "confirmed"
    assert notes(done)[0][0] == "success"
    again = ops_client.get(url)
    assert again.status_code == 302 and "is not a dead letter" in notes(again)[-1][1]


def test_each_message_gets_its_result_replayed_refused_or_dead_again(api, catalogue, monkeypatch, ops_client):
    _order, charge = stalled_order(api, monkeypatch)
    broken = undecodable()

    page = choose_replay(ops_client, [charge.pk, broken.pk])
    html = page.content.decode()
    assert 'id="catga-refusals"' in html and "2 selected, 1 replayable" in html
    assert "will be refused" in html

    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # still down: the replay dies again
    done = choose_replay(ops_client, [charge.pk, broken.pk], confirm=True)

    shown = notes(done)
    assert (
        "warning",
        f"Replayed payments.ChargePayment {charge.pk}, but it died again: TransientError: provider outage",
    ) in shown
    assert (
        "error",
        f"Could not replay payments.ChargePayment {broken.pk}: undecodable on arrival: nothing valid to deliver again.",
    ) in shown
    assert ("info", "Replayed 1 of 2 selected dead letters.") in shown
    assert Message.objects.get(pk=charge.pk).status == "dead"
    assert len(Message.objects.get(pk=charge.pk).headers["replays"]) == 1


def test_a_message_replayed_meanwhile_is_skipped(api, catalogue, monkeypatch, ops_client):
    _order, charge = stalled_order(api, monkeypatch)
    choose_replay(ops_client, [charge.pk])  # the confirmation page is open…
    replay.replay(
        [charge.pk], actor="admin:colleague", publish=get_mediator().transport.publish
    )  # …while a colleague replays it

    done = choose_replay(ops_client, [charge.pk], confirm=True)

    assert ("warning", f"Skipped {charge.pk}: no longer a dead letter (replayed meanwhile?).") in notes(done)
    assert [r["by"] for r in Message.objects.get(pk=charge.pk).headers["replays"]] == ["admin:colleague"]


def test_too_many_at_once_is_refused_with_a_pointer_to_the_command(api, catalogue, monkeypatch, ops_client):
    monkeypatch.setattr(admin_dead_letters, "MAX_AT_ONCE", 1)
    _, charge = stalled_order(api, monkeypatch)
    broken = undecodable()

    response = choose_replay(ops_client, [charge.pk, broken.pk])

    assert response.status_code == 302
    assert "manage.py replay --dead" in notes(response)[0][1]
    assert Message.objects.get(pk=charge.pk).status == "dead"


def test_replay_needs_the_replay_permission(api, catalogue, monkeypatch, client, support, admin_client):
    _order, charge = stalled_order(api, monkeypatch)
    client.force_login(support)

    listing = client.get(DEAD)
    assert listing.status_code == 200 and charge.pk in listing.content.decode()
    assert 'name="action"' not in listing.content.decode() and "needs the" in listing.content.decode()
    assert "Replay…" not in client.get(f"/admin/mediator/message/{charge.pk}/change/").content.decode()
    assert client.get(f"{DEAD}{charge.pk}/replay/").status_code == 403
    assert client.post(f"{DEAD}{charge.pk}/replay/", {"post": "yes"}).status_code == 403
    refused = choose_replay(client, [charge.pk], confirm=True)
    assert refused.status_code in (200, 302) and Message.objects.get(pk=charge.pk).status == "dead"
    assert "replays" not in Message.objects.get(pk=charge.pk).headers

    # A superuser holds every permission, this one included.
    assert "Replay selected dead letters" in admin_client.get(DEAD).content.decode()


def test_staff_without_view_permission_and_non_staff_are_refused(client, django_user_model, customer):
    clerk = staff(django_user_model, "clerk", [])
    client.force_login(clerk)
    assert client.get(DEAD).status_code == 403
    client.force_login(customer)
    response = client.get(DEAD)
    assert response.status_code == 302 and "/admin/login/" in response.url


def test_the_index_and_the_dashboard_lead_to_the_dead_letters(ops_client):
    assert f'href="{DEAD}"' in ops_client.get("/admin/").content.decode()
    assert f'href="{DEAD}"' in ops_client.get("/admin/mediator/message/dashboard/?refresh=0").content.decode()


def test_the_pages_cost_a_bounded_number_of_queries(
    api, catalogue, monkeypatch, ops_client, django_assert_max_num_queries
):
    stalled = [stalled_order(api, monkeypatch)[1] for _ in range(3)]
    broken = [undecodable() for _ in range(3)]
    ids = [m.pk for m in stalled + broken]
    ops_client.get(DEAD)  # warm the session

    # session, user, permissions (2), the capped count, the page, its dead deliveries
    with django_assert_max_num_queries(7):
        assert ops_client.get(DEAD).status_code == 200
    # the same, then the selected dead letters and their dead deliveries
    with django_assert_max_num_queries(9):
        assert choose_replay(ops_client, ids).status_code == 200
