import json

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token

from bench.celery_peer.shop.models import Item
from bench.load import skus


class Command(BaseCommand):
    help = "The benchmark's user, token and items (stock without limit); prints {token, skus} as JSON."

    def handle(self, *args, **options):
        user, _ = get_user_model().objects.get_or_create(username="bench")
        token, _ = Token.objects.get_or_create(user=user)
        items = skus()
        for sku in items:
            Item.objects.update_or_create(sku=sku, defaults={"on_hand": 10**9, "reserved": 0})
        self.stdout.write(json.dumps({"token": token.key, "skus": len(items)}))
