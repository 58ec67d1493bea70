import pytest


@pytest.fixture
def staff_user(django_user_model):
    return django_user_model.objects.create_user("staff", password="pw-staff-123", is_staff=True)


SUPPORT_PERMISSIONS = ("orders.view_order", "orders.change_order", "payments.view_payment", "inventory.add_item")


@pytest.fixture
def support_user(django_user_model):
    """Staff with the model permissions the API checks (staff_user has none: is_staff alone grants nothing)."""
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("support-api", password="pw-support-123", is_staff=True)
    for perm in SUPPORT_PERMISSIONS:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return user


@pytest.fixture
def customer(django_user_model):
    return django_user_model.objects.create_user("customer", password="pw-cust-123")


@pytest.fixture
def api(customer):
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(customer)
    return client


@pytest.fixture
def anon_api():
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def catalogue(db):
    from decimal import Decimal

    from apps.inventory.models import Item

    return {
        "SKU-A": Item.objects.create(sku="SKU-A", name="Apple", price=Decimal("2.50"), on_hand=10),
        "SKU-B": Item.objects.create(sku="SKU-B", name="Banana", price=Decimal("1.25"), on_hand=5),
        "SKU-RARE": Item.objects.create(sku="SKU-RARE", name="Rare", price=Decimal("100.00"), on_hand=1),
    }
