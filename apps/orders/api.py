"""Orders REST API: one view per operation; views only translate HTTP to messages.

A customer sees and cancels only the orders they placed; another's order answers 404,
so ids cannot be probed. Seeing anyone's needs orders.view_order, cancelling anyone's
orders.change_order (Django's model permissions: is_staff alone grants neither).
"""

import msgspec
from django.db import transaction
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.mediator import NotFound, mediator
from apps.mediator.api.schema import errors
from apps.orders import idempotency
from apps.orders.contracts import GetOrder, OrderLineIn, OrderView, PlaceOrder, RequestOrderCancellation


class OrderOutputSerializer(serializers.Serializer):
    """The shape of an order in every answer (documentation of OrderView)."""

    id = serializers.CharField()
    customer_id = serializers.CharField()
    status = serializers.ChoiceField(choices=["pending", "confirmed", "cancelled"])
    reason = serializers.CharField(allow_blank=True)
    total = serializers.DecimalField(max_digits=12, decimal_places=2)
    lines = inline_serializer(
        "OrderLineOut",
        {
            "sku": serializers.CharField(),
            "quantity": serializers.IntegerField(),
            "unit_price": serializers.DecimalField(max_digits=12, decimal_places=2),
        },
        many=True,
    )
    correlation_id = serializers.CharField()
    created_at = serializers.CharField()
    updated_at = serializers.CharField()
    saga = inline_serializer(
        "SagaView",
        {
            "status": serializers.CharField(),
            "step": serializers.CharField(),
            "reason": serializers.CharField(allow_blank=True),
            "log": serializers.ListField(child=serializers.DictField()),
        },
        allow_null=True,
    )
    owner_id = serializers.IntegerField(allow_null=True)


ERRORS = errors(400, 401, 403, 404)


def visible_order(request, order_id: str, perm: str = "orders.view_order") -> OrderView:
    order = mediator.ask(GetOrder(order_id=order_id))
    if order.owner_id != request.user.pk and not request.user.has_perm(perm):
        raise NotFound(f"order {order_id} not found")
    return order


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

    @extend_schema(
        operation_id="order_place",
        request=inline_serializer(
            "PlaceOrderInput",
            {
                "customer_id": serializers.CharField(max_length=64),
                "lines": LineSerializer(many=True),
                "payment_token": serializers.CharField(max_length=64),
            },
        ),
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER, required=False)],
        responses={202: OrderOutputSerializer, **errors(409), **ERRORS},
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        command = PlaceOrder(
            customer_id=data.validated_data["customer_id"],
            lines=tuple(OrderLineIn(sku=li["sku"], quantity=li["quantity"]) for li in data.validated_data["lines"]),
            payment_token=data.validated_data["payment_token"],
            owner_id=request.user.pk,
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
        order = created.get("order") or visible_order(request, order_id)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return Response(msgspec.to_builtins(order), status=status.HTTP_202_ACCEPTED, headers=headers)


class OrderCancelApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="order_cancel",
        request=None,
        responses={202: OrderOutputSerializer, **errors(409), **ERRORS},
    )
    def post(self, request, order_id: str):
        order = visible_order(request, order_id, "orders.change_order")
        with transaction.atomic():
            mediator.execute(RequestOrderCancellation(order_id=order_id), correlation_id=order.correlation_id)
        return Response(msgspec.to_builtins(visible_order(request, order_id)), status=status.HTTP_202_ACCEPTED)


class OrderDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(operation_id="order_get", responses={200: OrderOutputSerializer, **ERRORS})
    def get(self, request, order_id: str):
        return Response(msgspec.to_builtins(visible_order(request, order_id)))
