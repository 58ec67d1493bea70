from django.urls import path

from apps.inventory.api import ItemDetailApi, ItemListCreateApi

urlpatterns = [
    path("items/", ItemListCreateApi.as_view(), name="item-list"),
    path("items/<str:sku>/", ItemDetailApi.as_view(), name="item-detail"),
]
