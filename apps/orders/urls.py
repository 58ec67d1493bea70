from django.urls import path

from apps.orders.api import OrderCancelApi, OrderCreateApi, OrderDetailApi

urlpatterns = [
    path("", OrderCreateApi.as_view(), name="order-create"),
    path("<str:order_id>/", OrderDetailApi.as_view(), name="order-detail"),
    path("<str:order_id>/cancel/", OrderCancelApi.as_view(), name="order-cancel"),
]
