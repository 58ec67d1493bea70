"""Payments REST API (read-only: payments are made by messages, not requests).

A user with payments.view_payment sees every payment; a customer sees the payments of one of their own orders
(`?order_id=`), ownership being the orders context's answer to GetOrder.
"""

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from apps.mediator import NotFound, mediator
from apps.mediator.api.schema import PAGE_PARAMETERS, Pagination, errors, paginated
from apps.orders.contracts import GetOrder
from apps.payments.models import Payment


class PaymentOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Payment
        fields = ["id", "order_id", "amount", "status", "reason", "created_at"]


class PaymentListApi(APIView):
    permission_classes = [IsAuthenticated]

    class FilterSerializer(serializers.Serializer):
        order_id = serializers.CharField(max_length=64, required=False)

    @extend_schema(
        operation_id="payment_list",
        parameters=[OpenApiParameter("order_id", str, required=False), *PAGE_PARAMETERS],
        responses={200: paginated("PaginatedPayments", PaymentOutputSerializer), **errors(400, 401, 403)},
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        order_id = filters.validated_data.get("order_id")
        if not request.user.has_perm("payments.view_payment"):
            if order_id is None:
                raise PermissionDenied("Give ?order_id= of one of your orders.")
            try:
                if mediator.ask(GetOrder(order_id=order_id)).owner_id != request.user.pk:
                    raise NotFound(f"order {order_id} not found")
            except NotFound:
                return self._page(request, Payment.objects.none())
        payments = Payment.objects.all()
        if order_id is not None:
            payments = payments.filter(order_id=order_id)
        return self._page(request, payments)

    def _page(self, request, payments):
        paginator = Pagination()
        page = paginator.paginate_queryset(payments, request, view=self)
        return paginator.get_paginated_response(PaymentOutputSerializer(page, many=True).data)
