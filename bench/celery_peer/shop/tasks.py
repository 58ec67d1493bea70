"""The saga's three steps as Celery tasks, chained by order_place after commit.

acks_late with reject_on_worker_lost: a task whose worker dies is delivered again, and the
services' state checks make the repeat harmless.
"""

from celery import shared_task

from . import services

OPTIONS = {"acks_late": True, "reject_on_worker_lost": True}


@shared_task(name="shop.reserve", **OPTIONS)
def reserve(order_id: str) -> None:
    services.order_reserve(order_id)


@shared_task(name="shop.charge", **OPTIONS)
def charge(order_id: str) -> None:
    services.order_charge(order_id)


@shared_task(name="shop.confirm", **OPTIONS)
def confirm(order_id: str) -> None:
    services.order_confirm(order_id)
