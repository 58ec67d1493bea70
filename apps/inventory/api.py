"""Inventory REST API."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.inventory import selectors, services
from apps.inventory.models import Item
from apps.mediator.api.permissions import has_model_permission
from apps.mediator.api.schema import PAGE_PARAMETERS, Pagination, errors, paginated


class ItemOutputSerializer(serializers.ModelSerializer):
    available = serializers.IntegerField(read_only=True)

    class Meta:
        model = Item
        fields = ["sku", "name", "price", "on_hand", "reserved", "available"]


class ItemListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        sku = serializers.RegexField(r"^[A-Za-z0-9_.-]{1,64}$")
        name = serializers.CharField(max_length=200)
        price = serializers.DecimalField(max_digits=12, decimal_places=2, min_value=0)
        on_hand = serializers.IntegerField(min_value=0, max_value=2_000_000_000)

    def get_permissions(self):
        if self.request.method == "POST":
            return [has_model_permission("inventory.add_item")()]
        return super().get_permissions()

    @extend_schema(
        operation_id="item_list",
        parameters=PAGE_PARAMETERS,
        responses={200: paginated("PaginatedItems", ItemOutputSerializer), **errors(400)},
    )
    def get(self, request):
        paginator = Pagination()
        page = paginator.paginate_queryset(selectors.item_list(), request, view=self)
        return paginator.get_paginated_response(ItemOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="item_create",
        request=InputSerializer,
        responses={201: ItemOutputSerializer, **errors(400, 401, 403)},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        item = services.item_create(**data.validated_data)
        return Response(ItemOutputSerializer(item).data, status=status.HTTP_201_CREATED)


class ItemDetailApi(APIView):
    @extend_schema(operation_id="item_get", responses={200: ItemOutputSerializer, **errors(404)})
    def get(self, request, sku: str):
        return Response(ItemOutputSerializer(get_object_or_404(Item, sku=sku)).data)
