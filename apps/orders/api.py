"""Orders REST API: one view per operation; views only translate HTTP to messages."""

import msgspec
from django.db import transaction
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.mediator.runtime import mediator
from apps.orders import idempotency
from apps.orders.contracts import GetOrder, OrderLineIn, PlaceOrder, RequestOrderCancellation


class OrderCreateApi(APIView):
    permission_classes = [IsAuthenticated]

    class LineSerializer(serializers.Serializer):
        sku = serializers.CharField(max_length=64)
        quantity = serializers.IntegerField(min_value=1, max_value=10_000)

    class InputSerializer(serializers.Serializer):
        customer_id = serializers.CharField(max_length=64)
        lines = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=100)
        payment_token = serializers.CharField(max_length=64)

        def validate_lines(self, value):
            line = OrderCreateApi.LineSerializer(data=value, many=True)
            line.is_valid(raise_exception=True)
            return line.validated_data

    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        command = PlaceOrder(
            customer_id=data.validated_data["customer_id"],
            lines=tuple(OrderLineIn(sku=li["sku"], quantity=li["quantity"]) for li in data.validated_data["lines"]),
            payment_token=data.validated_data["payment_token"],
        )
        key = request.headers.get("Idempotency-Key")
        if key is None:
            with transaction.atomic():
                order = mediator.execute(command)
            return Response(msgspec.to_builtins(order), status=status.HTTP_202_ACCEPTED)
        created = {}

        def create() -> str:
            created["order"] = mediator.execute(command)
            return created["order"].id

        order_id, replayed = idempotency.once(user=request.user, key=key, data=data.validated_data, create=create)
        order = created.get("order") or mediator.ask(GetOrder(order_id=order_id))
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Response(msgspec.to_builtins(order), status=status.HTTP_202_ACCEPTED, headers=headers)


class OrderCancelApi(APIView):
    permission_classes = [IsAuthenticated]

    def post(self, request, order_id: str):
        order = mediator.ask(GetOrder(order_id=order_id))
        with transaction.atomic():
            mediator.execute(RequestOrderCancellation(order_id=order_id), correlation_id=order.correlation_id)
        return Response(msgspec.to_builtins(mediator.ask(GetOrder(order_id=order_id))), status=status.HTTP_202_ACCEPTED)


class OrderDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request, order_id: str):
        return Response(msgspec.to_builtins(mediator.ask(GetOrder(order_id=order_id))))
