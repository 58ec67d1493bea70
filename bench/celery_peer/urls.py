from django.urls import path

from bench.celery_peer.shop import api

urlpatterns = [
    path("api/orders/", api.OrderCreateApi.as_view()),
    path("health/", api.health),
]
