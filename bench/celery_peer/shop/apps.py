from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "bench.celery_peer.shop"
    label = "shop"
    default_auto_field = "django.db.models.BigAutoField"
