from django.urls import path

from apps.payments.api import PaymentListApi

urlpatterns = [path("", PaymentListApi.as_view(), name="payment-list")]
