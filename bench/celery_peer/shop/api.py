"""POST /api/orders/: the body and answer bench/load.py uses for ours, so one load drives both."""

from django.http import HttpResponse
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from . import services


class OrderCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class LineSerializer(serializers.Serializer):
            sku = serializers.CharField(max_length=64)
            quantity = serializers.IntegerField(min_value=1, max_value=10_000)

        customer_id = serializers.CharField(max_length=64)
        lines = LineSerializer(many=True, min_length=1, max_length=100)
        payment_token = serializers.CharField(max_length=64)

    class OutputSerializer(serializers.Serializer):
        id = serializers.CharField()
        status = serializers.CharField()
        created_at = serializers.DateTimeField()

    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order = services.order_place(**data.validated_data)
        return Response(self.OutputSerializer(order).data, status=status.HTTP_202_ACCEPTED)


def health(request):
    return HttpResponse("ok")
