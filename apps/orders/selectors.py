from apps.mediator import NotFound
from apps.orders.models import Order


def order_get(order_id: str) -> Order:
    order = Order.objects.prefetch_related("lines").filter(pk=order_id).first()
    if order is None:
        raise NotFound(f"order {order_id} not found")
    return order
