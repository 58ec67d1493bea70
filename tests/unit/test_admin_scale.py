"""The history admin at 200,000 rows: the list and the dashboard cost a bounded number of queries.

The same generator feeds bench/admin_render.py, which prints the render times.
"""

import datetime as dt
import random
from urllib.parse import quote

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.mediator.core.ids import new_id
from apps.mediator.models import Delivery, Message

ROWS = 200_000

# (type, kind, context, handler) of a plausible mix; events with no handler stay "published".
TYPES = [
    ("orders.PlaceOrder", "command", "orders", "orders:apps.orders.handlers.place_order"),
    ("orders.OrderPlaced", "event", "orders", None),
    ("inventory.ReserveStock", "command", "inventory", "inventory:apps.inventory.handlers.reserve_stock"),
    ("inventory.StockReserved", "event", "inventory", "orders:apps.orders.handlers.on_stock_reserved"),
    ("payments.ChargePayment", "command", "payments", "payments:apps.payments.handlers.charge_payment"),
    ("payments.PaymentCaptured", "event", "payments", "orders:apps.orders.handlers.on_payment_captured"),
    ("orders.ConfirmOrder", "command", "orders", "orders:apps.orders.handlers.confirm_order"),
    ("orders.OrderConfirmed", "event", "orders", "inventory:apps.inventory.handlers.commit_stock"),
]
# Outcome of a handled type's message: mostly handled, a few retrying, dead or still in the outbox.
OUTCOMES = [("handled", 0.94), ("failed", 0.02), ("dead", 0.01), ("pending", 0.03)]


def generate_history(total: int, *, now: dt.datetime | None = None, minutes: int = 120, batch: int = 20_000) -> None:
    """`total` messages in conversations of 8 (an order's flow), spread evenly over the last `minutes`,
    each with its delivery (attempts, duration, attempt log) unless it is an unhandled event."""
    now = now or timezone.now()
    rng = random.Random(20_000)
    span_ms = minutes * 60_000
    now_ms = int(now.timestamp() * 1000)
    correlation_id = causation_id = ""
    for start in range(0, total, batch):
        messages, deliveries = [], []
        for i in range(start, min(start + batch, total)):
            created_ms = now_ms - span_ms + (span_ms * i) // total
            created = dt.datetime.fromtimestamp(created_ms / 1000, tz=dt.UTC)
            message_id = new_id(created_ms)
            type_, kind, context, handler = TYPES[i % len(TYPES)]
            if i % len(TYPES) == 0:
                correlation_id, causation_id = message_id, ""
            status = "published" if handler is None else rng.choices(*zip(*OUTCOMES, strict=True))[0]
            messages.append(
                Message(
                    id=message_id,
                    type=type_,
                    kind=kind,
                    context=context,
                    correlation_id=correlation_id,
                    causation_id=causation_id,
                    qos="at_least_once",
                    status=status,
                    payload={"order_id": correlation_id, "lines": [{"sku": "SKU-A", "quantity": 1}] * 3},
                    headers={"traceparent": f"00-{message_id.lower():0>32}-{'0' * 16}-01"},
                    created_at=created,
                    published_at=None if status == "pending" else created,
                )
            )
            causation_id = message_id
            if handler is None or status == "pending":
                continue
            attempts = {"handled": 1, "failed": 2, "dead": 5}[status]
            duration = rng.lognormvariate(1.0, 0.6)
            finished = created + dt.timedelta(milliseconds=5 + duration)
            final = {"handled": "succeeded", "failed": "retrying", "dead": "dead"}[status]
            outcomes = ["retrying"] * (attempts - 1) + [final]
            log = [
                {
                    "attempt": n,
                    "started_at": created.isoformat(),
                    "finished_at": finished.isoformat(),
                    "duration_ms": round(duration, 3),
                    "outcome": outcome,
                    "error": "" if outcome == "succeeded" else "TransientError: timeout",
                }
                for n, outcome in enumerate(outcomes, start=1)
            ]
            deliveries.append(
                Delivery(
                    message_id=message_id,
                    handler=handler,
                    context=handler.split(":", 1)[0],
                    status=final,
                    attempts=attempts,
                    first_started_at=created,
                    started_at=created,
                    finished_at=finished,
                    duration_ms=duration,
                    error="" if final == "succeeded" else "TransientError: timeout",
                    attempt_log=log,
                )
            )
        Message.objects.bulk_create(messages, batch_size=2_000)
        Delivery.objects.bulk_create(deliveries, batch_size=2_000)


@pytest.fixture(scope="module")
def big_history(django_db_setup, django_db_blocker):
    """200k rows, made once for this module and removed after it (other modules expect an empty history)."""
    with django_db_blocker.unblock():
        generate_history(ROWS)
        yield
        with connection.cursor() as cursor:  # the ORM's delete would load 200k rows to cascade
            for model in (Delivery, Message):
                cursor.execute(f"DELETE FROM {model._meta.db_table}")  # noqa: S608 (a model's own table name)


@pytest.fixture
def support(django_user_model, big_history, db):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("support", password="pw-support-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_message", "view_delivery", "view_order"]))
    return user


def count_queries(client, url):
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, url
    return response, [q["sql"] for q in queries.captured_queries]


def test_the_generator_makes_the_rows_it_promises(big_history, db):
    assert Message.objects.count() == ROWS
    assert Delivery.objects.count() > ROWS * 0.7
    assert Message.objects.filter(status="dead").exists()


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?status=dead",
        "?type=payments.ChargePayment&kind=command",
        "?context=inventory&created_at__gte={today}",
        "?p=3",
        "?q={some_id}",
    ],
)
def test_the_message_list_costs_a_bounded_number_of_queries_at_200k_rows(
    client, support, django_assert_max_num_queries, query
):
    some_id = Message.objects.filter(type="payments.ChargePayment").values_list("correlation_id", flat=True).first()
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)  # what "Today" links to
    client.force_login(support)
    url = "/admin/mediator/message/" + query.format(some_id=some_id, today=quote(str(today)))

    # session, user, permissions (2), the capped count, the page, its deliveries
    with django_assert_max_num_queries(8):
        response = client.get(url)

    assert response.status_code == 200
    assert b"catga-status" in response.content  # rows were rendered
    _, sql = count_queries(client, url)
    counted = [s for s in sql if "COUNT(" in s.upper()]
    assert counted and all("LIMIT" in s.upper() for s in counted), "every count is capped"
    assert not any('"payload"' in s for s in sql), "the list never loads payloads"


def test_an_unfiltered_list_says_more_than_it_counted(client, support):
    client.force_login(support)
    response = client.get("/admin/mediator/message/")
    assert b"more than 10000" in response.content


def test_the_dashboard_costs_a_bounded_number_of_queries_at_200k_rows(client, support, django_assert_max_num_queries):
    client.force_login(support)

    # session, user, permissions (2), throughput, handling times, waiting, orders panel
    with django_assert_max_num_queries(10):
        response = client.get("/admin/mediator/message/dashboard/")

    assert response.status_code == 200
    chart = response.context["chart"]
    assert sum(bar.total for bar in chart.bars) > ROWS * 0.4  # the last hour holds half of two hours of rows
    assert response.context["waiting"]["dead"].count == Message.objects.filter(status="dead").count()
    assert {t.type for t in response.context["timings"]} >= {"payments.ChargePayment", "orders.PlaceOrder"}


@pytest.mark.parametrize("query", ["", "?context=payments", "?p=5", "?q={some_id}"])
def test_the_dead_letters_cost_a_bounded_number_of_queries_at_200k_rows(
    client, support, django_assert_max_num_queries, query
):
    dead = Message.objects.filter(status="dead").order_by("id")
    some_id = dead.values_list("correlation_id", flat=True).first()
    client.force_login(support)
    url = "/admin/mediator/deadletter/" + query.format(some_id=some_id)

    # session, user, permissions (2), the capped count, the page, its dead deliveries (+ the order resolver)
    with django_assert_max_num_queries(8 if "q=" in url else 7):
        response = client.get(url)

    assert response.status_code == 200
    shown = response.context["cl"].result_list
    assert shown and all(m.status == "dead" and m.dead_deliveries for m in shown)
    assert b"TransientError: timeout" in response.content  # each with its reason
    _, sql = count_queries(client, url)
    assert not any('"payload"' in s for s in sql), "the list never loads payloads"
