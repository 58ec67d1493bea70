"""Demo data for `make run`: a catalogue, a staff admin and a customer with a token."""

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from apps.inventory.models import Item

CATALOGUE = [
    ("SKU-KEYBOARD", "Mechanical keyboard", "89.00", 500),
    ("SKU-MOUSE", "Wireless mouse", "25.50", 1000),
    ("SKU-MONITOR", "27-inch monitor", "219.99", 200),
    ("SKU-CABLE", "USB-C cable", "9.90", 5000),
    ("SKU-RARE", "Limited edition mug", "15.00", 3),
]


class Command(BaseCommand):
    help = "Create demo items and users (idempotent). Never run it against production."

    def add_arguments(self, parser):
        parser.add_argument("--password", default="demo-pass-123", help="Password for 'admin' and 'demo'.")

    def handle(self, *args, password, **options):
        for sku, name, price, on_hand in CATALOGUE:
            Item.objects.get_or_create(sku=sku, defaults={"name": name, "price": Decimal(price), "on_hand": on_hand})
        users = get_user_model()
        admin, created = users.objects.get_or_create(
            username="admin", defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            admin.set_password(password)
            admin.save()
        demo, created = users.objects.get_or_create(username="demo")
        if created:
            demo.set_password(password)
            demo.save()
        token, _ = Token.objects.get_or_create(user=demo)
        self.stdout.write(f"Demo data ready: {len(CATALOGUE)} items.")
        self.stdout.write(f"Admin login: admin / {password}   API token for 'demo': {token.key}")
