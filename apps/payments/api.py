"""Payments REST API (read-only: payments are made by messages, not requests)."""

from rest_framework import serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from apps.payments.models import Payment


class PaymentOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Payment
        fields = ["id", "order_id", "amount", "status", "reason", "created_at"]


class PaymentListApi(APIView):
    permission_classes = [IsAuthenticated]

    class FilterSerializer(serializers.Serializer):
        order_id = serializers.CharField(max_length=64, required=False)

    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        payments = Payment.objects.all()
        if "order_id" in filters.validated_data:
            payments = payments.filter(order_id=filters.validated_data["order_id"])
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(payments, request, view=self)
        return paginator.get_paginated_response(PaymentOutputSerializer(page, many=True).data)
