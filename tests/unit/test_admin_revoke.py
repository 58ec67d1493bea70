"""Revoking from the admin: a confirmation first, the revoke permission, who and when on the message page."""

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import transaction

from apps.inventory.contracts import ReserveStock, StockLine
from apps.mediator.models import Message
from apps.mediator.runtime import get_mediator

pytestmark = pytest.mark.django_db(transaction=True)

HISTORY = "/admin/mediator/message/"
VIEW = ["view_message", "view_delivery"]


def staff(django_user_model, username, codenames):
    user = django_user_model.objects.create_user(username, password=f"pw-{username}-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def ops_client(client, django_user_model):
    client.force_login(staff(django_user_model, "ops", [*VIEW, "revoke_message"]))
    return client


def reserve(order_id: str, **options) -> str:
    with transaction.atomic():
        handle = get_mediator().send(
            ReserveStock(order_id=order_id, lines=(StockLine(sku="SKU-A", quantity=1),)), **options
        )
    return handle.message_id


def notes(response) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


def test_the_revoke_action_asks_first_then_revokes_and_the_page_shows_who(catalogue, ops_client):
    later = reserve("o-later", countdown=3600)
    handled = reserve("o-now")
    assert Message.objects.get(pk=handled).status == "handled"

    page = ops_client.post(HISTORY, {"action": "revoke_selected", "_selected_action": [later, handled], "index": "0"})

    assert page.status_code == 200
    assert page.templates[0].name == "admin/mediator/message/revoke_confirmation.html"
    html = page.content.decode()
    assert later in html and handled in html and "admin:ops" in html
    assert "2 selected, 1 revocable" in html
    assert Message.objects.get(pk=later).status == "pending", "nothing happens before confirming"

    done = ops_client.post(
        HISTORY,
        {"action": "revoke_selected", "_selected_action": [later, handled], "post": "yes", "reason": "duplicate order"},
    )

    assert done.status_code == 302
    levels = dict((text.split(":")[0], level) for level, text in notes(done))
    assert levels[f"Revoked inventory.ReserveStock {later}"] == "success"
    assert levels[f"Did not revoke inventory.ReserveStock {handled}"] == "warning"
    assert Message.objects.get(pk=handled).status == "handled"
    revoked = Message.objects.get(pk=later)
    assert revoked.status == "revoked"
    assert revoked.headers["revoked"]["by"] == "admin:ops"
    assert revoked.headers["revoked"]["reason"] == "duplicate order"
    assert get_mediator().transport.run_due(now=revoked.available_at.timestamp() + 1) == 0  # never published

    message_page = ops_client.get(f"{HISTORY}{later}/change/").content.decode()
    assert 'class="catga-status catga-status-revoked"' in message_page
    assert 'id="catga-revoked"' in message_page and "admin:ops" in message_page and "duplicate order" in message_page
    assert f"{HISTORY}{later}/revoke/" not in message_page  # no button once revoked

    listed = ops_client.get(HISTORY, {"status__exact": "revoked"}).content.decode()
    assert later in listed and handled not in listed


def test_one_message_is_revoked_from_its_page_after_confirming(catalogue, ops_client):
    later = reserve("o-page", countdown=3600)
    html = ops_client.get(f"{HISTORY}{later}/change/").content.decode()
    assert f'href="{HISTORY}{later}/revoke/"' in html

    confirm = ops_client.get(f"{HISTORY}{later}/revoke/")
    assert confirm.status_code == 200 and "Revoke this message?" in confirm.content.decode()
    assert Message.objects.get(pk=later).status == "pending"

    done = ops_client.post(f"{HISTORY}{later}/revoke/", {"post": "yes"})
    assert done.status_code == 302 and done.url == f"{HISTORY}{later}/change/"
    assert Message.objects.get(pk=later).status == "revoked"


def test_revoking_needs_the_revoke_permission(catalogue, client, django_user_model):
    later = reserve("o-perm", countdown=3600)
    client.force_login(staff(django_user_model, "support", [*VIEW, "replay_message"]))

    assert f"{HISTORY}{later}/revoke/" not in client.get(f"{HISTORY}{later}/change/").content.decode()
    assert client.post(f"{HISTORY}{later}/revoke/", {"post": "yes"}).status_code == 403
    listing = client.post(HISTORY, {"action": "revoke_selected", "_selected_action": [later], "post": "yes"})
    assert listing.status_code in (200, 302)  # the action is not offered: Django answers "no action selected"
    assert Message.objects.get(pk=later).status == "pending"


def test_expired_and_revoked_are_status_filters_and_an_expiry_is_on_the_page(catalogue, ops_client):
    later = reserve("o-exp", countdown=60, expires=120)
    html = ops_client.get(HISTORY).content.decode()
    assert "?status__exact=revoked" in html and "?status__exact=expired" in html
    page = ops_client.get(f"{HISTORY}{later}/change/").content.decode()
    expires_at = Message.objects.get(pk=later).expires_at
    assert "Expires (UTC)" in page and f"{expires_at:%Y-%m-%d %H:%M:%S.%f}" in page
