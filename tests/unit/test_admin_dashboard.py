"""The operations dashboard: chart, handling times, backlog, dead letters, orders, consumers."""

import asyncio
import datetime as dt
import re
import socket
import time
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.mediator.console import extensions
from apps.mediator.console.dashboard import chart, stats
from apps.mediator.core.ids import new_id
from apps.mediator.models import Message

DASHBOARD = "/admin/mediator/message/dashboard/"


def place(api, token="tok_visa"):
    response = api.post(
        "/api/orders/",
        {"customer_id": "cust-1", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": token},
        format="json",
    )
    assert response.status_code == 202
    return response.json()["id"]


def history_row(status, created=None, type_="orders.ConfirmOrder"):
    created = created or timezone.now()
    message_id = new_id(int(created.timestamp() * 1000))
    return Message.objects.create(
        id=message_id,
        type=type_,
        kind="command",
        context="orders",
        correlation_id=message_id,
        qos="at_least_once",
        status=status,
        payload={},
        created_at=created,
    )


@pytest.fixture
def support_client(client, django_user_model, db):
    user = django_user_model.objects.create_user("support", password="pw-support-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_message", "view_delivery", "view_order"]))
    client.force_login(user)
    return client


@pytest.mark.django_db(transaction=True)
def test_the_dashboard_charts_the_last_hour_by_outcome_and_shows_orders_by_status(api, catalogue, support_client):
    place(api)
    place(api, token="tok_declined")
    total = Message.objects.count()

    response = support_client.get(DASHBOARD)

    assert response.status_code == 200
    html = response.content.decode()
    drawn = response.context["chart"]
    assert sum(bar.total for bar in drawn.bars) == total
    assert len(drawn.bars) == 60
    assert sum(bar.total for bar in drawn.bars[-2:]) == total  # all just now (this minute, or the one before)
    segments = re.findall(r'<rect class="segment segment-(\w+)"[^>]* height="([\d.]+)"[^>]*data-count="(\d+)"', html)
    # Handled and published (events nobody here handles); pending are the saga's scheduled timeouts.
    assert {"handled", "published"} <= {status for status, _, _ in segments} <= {"handled", "published", "pending"}
    assert sum(int(count) for _, _, count in segments) == total
    assert all(float(height) > 0 for _, height, _ in segments)
    # Each bar's tooltip lists its split by outcome.
    assert re.search(r"UTC, \d+ messages \(handled: \d+, published: \d+[^)]*\)</title>", html)
    orders = dict(next(rows for panel, rows in response.context["panels"] if panel.title == "Orders by status"))
    assert orders == {"Pending": 0, "Confirmed": 1, "Cancelled": 1}
    timings = {t.type: t for t in response.context["timings"]}
    assert timings["payments.ChargePayment"].count == 2
    assert 0 < timings["payments.ChargePayment"].p50_ms <= timings["payments.ChargePayment"].p95_ms


def test_backlog_retrying_and_dead_letters_are_counted_with_their_age(support_client):
    now = timezone.now()
    history_row("pending", now - dt.timedelta(minutes=3))
    history_row("pending")
    scheduled = history_row("pending")
    Message.objects.filter(pk=scheduled.pk).update(available_at=now + dt.timedelta(minutes=5))
    history_row("failed")
    for minutes in (90, 5, 1):
        history_row("dead", now - dt.timedelta(minutes=minutes))
    history_row("handled", now - dt.timedelta(days=3))

    response = support_client.get(DASHBOARD)

    waiting = response.context["waiting"]
    assert (waiting["pending"].count, waiting["failed"].count, waiting["dead"].count) == (2, 1, 3)
    assert waiting["pending"].scheduled == 1 and now - waiting["pending"].oldest >= dt.timedelta(minutes=3)
    assert now - waiting["dead"].oldest >= dt.timedelta(minutes=90)
    html = response.content.decode()
    assert re.search(r'id="card-dead">\s*<div class="figure"><a href="/admin/mediator/deadletter/">3</a>', html)
    assert "1\xa0hour, 30\xa0minutes old" in html
    assert '<span id="scheduled">1 scheduled for later</span>' in html


def test_consumer_pending_is_na_until_the_transport_reports_it(support_client, monkeypatch):
    html = support_client.get(DASHBOARD).content.decode()
    assert 'id="consumers-na"' in html

    class ReportingTransport:
        def consumer_pending(self):
            return {"orders-commands": 3, "inventory-events": 0}

    monkeypatch.setattr("apps.mediator.runtime.get_mediator", lambda: SimpleNamespace(transport=ReportingTransport()))
    html = support_client.get(DASHBOARD).content.decode()
    assert 'id="consumers-na"' not in html
    assert re.search(r'<th scope="row">orders-commands</th><td class="catga-num">3</td>', html)


def test_an_empty_answer_from_the_broker_shows_as_na(support_client, monkeypatch):
    class UnreachableTransport:
        def consumer_pending(self):
            return {}  # what NatsTransport answers when NATS does not

    monkeypatch.setattr("apps.mediator.runtime.get_mediator", lambda: SimpleNamespace(transport=UnreachableTransport()))
    html = support_client.get(DASHBOARD).content.decode()
    assert 'id="consumers-na"' in html and "did not answer in time" in html


def test_the_nats_transport_answers_promptly_with_nothing_when_nats_is_unreachable(settings):
    from apps.mediator.runtime import build_dispatcher
    from apps.mediator.transports.nats.publisher import NatsTransport

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings.CATGA = {**settings.CATGA, "NATS_URL": f"nats://127.0.0.1:{port}"}
    transport = NatsTransport(build_dispatcher())
    try:
        started = time.monotonic()
        assert transport.consumer_pending(timeout=0.2) == {}
        assert transport.consumer_pending(timeout=0.2) == {}
        assert time.monotonic() - started < 5, "the admin must never hang on NATS"
    finally:
        # It never connected: stop its connect loop before closing, so no task is left pending.
        asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), transport._ensure_loop()).result(5)
        transport.close()


async def _cancel_other_tasks():
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()


def test_a_failing_panel_is_reported_without_breaking_the_page(support_client, monkeypatch):
    def broken():
        raise RuntimeError("panel down")

    monkeypatch.setattr(extensions, "_panels", dict(extensions._panels))
    extensions.register_panel("Broken", broken)

    response = support_client.get(DASHBOARD)

    assert response.status_code == 200
    assert "This panel failed; see the server log." in response.content.decode()


def test_the_dashboard_refreshes_itself_unless_paused(support_client):
    assert '<meta http-equiv="refresh" content="10">' in support_client.get(DASHBOARD).content.decode()
    assert 'http-equiv="refresh"' not in support_client.get(DASHBOARD, {"refresh": "0"}).content.decode()
    assert '<meta http-equiv="refresh" content="5">' in support_client.get(DASHBOARD, {"refresh": "1"}).content.decode()


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_with_permission_only(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("customer", password="pw-cust-123"))
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and response.url.startswith("/admin/login/")

    client.force_login(django_user_model.objects.create_user("clerk", password="pw-clerk-123", is_staff=True))
    assert client.get(DASHBOARD).status_code == 403

    client.logout()
    assert client.get(DASHBOARD).status_code == 302


@pytest.mark.django_db
def test_throughput_puts_each_message_in_its_minute_and_ignores_older_ones():
    now = timezone.now().replace(second=30, microsecond=0)
    history_row("handled", now)
    history_row("dead", now - dt.timedelta(seconds=29))  # same minute
    history_row("handled", now - dt.timedelta(minutes=10))
    history_row("handled", now - dt.timedelta(minutes=59, seconds=30))  # first minute of the window
    history_row("handled", now - dt.timedelta(minutes=61))  # outside

    minutes = stats.throughput(now)

    assert [m.start for m in minutes][-1] == now.replace(second=0)
    assert minutes[-1].counts["handled"] == 1 and minutes[-1].counts["dead"] == 1
    assert minutes[-11].total == 1
    assert minutes[0].total == 1
    assert sum(m.total for m in minutes) == 4


def test_percentiles_interpolate_between_ranks():
    values = sorted(float(v) for v in range(1, 101))
    assert stats.percentile(values, 0.5) == pytest.approx(50.5)
    assert stats.percentile(values, 0.95) == pytest.approx(95.05)
    assert stats.percentile([7.0], 0.95) == 7.0


def test_the_chart_stacks_segments_in_proportion_on_a_readable_axis():
    start = timezone.now().replace(second=0, microsecond=0)
    minutes = [stats.Minute(start, {"handled": 6, "dead": 2}), stats.Minute(start, {"handled": 0})]

    drawn = chart.stacked_bars(minutes)

    assert [chart.axis(peak) for peak in (0, 1, 8, 11, 26, 100_000)] == [
        (1, 1),
        (1, 1),
        (8, 2),
        (15, 5),
        (30, 10),
        (100_000, 20_000),
    ]
    assert [value for _, value in drawn.gridlines] == [0, 2, 4, 6, 8]
    handled, dead = drawn.bars[0].segments
    assert handled.height == pytest.approx(3 * dead.height, rel=0.01)
    assert dead.y + dead.height == pytest.approx(handled.y)  # dead sits on top of handled
    assert drawn.bars[1].segments == [] and drawn.peak == 8


def test_the_workers_card_counts_live_drained_and_gone_workers(support_client):
    from apps.mediator.models import WorkerHeartbeat

    now = timezone.now()
    for pid, age, paused, in_flight in [(1, 1, False, 3), (2, 2, True, 1), (3, 120, False, 9)]:
        WorkerHeartbeat.objects.create(
            id=f"h:{pid}",
            host="h",
            pid=pid,
            contexts=["inventory"],
            concurrency=4,
            interval=10.0,
            started_at=now,
            last_beat_at=now - dt.timedelta(seconds=age),
            in_flight=in_flight,
            throughput=2.5,
            paused=paused,
        )
    page = support_client.get(DASHBOARD + "?refresh=0").content.decode()
    card = page[page.index('id="catga-workers"') :].split("</table>")[0]
    cells = re.findall(r'<th scope="row">([^<]+)</th><td class="catga-num">([^<]+)</td>', card)
    assert dict(cells) == {
        "live": "2",
        "drained or draining": "1",
        "gone (no beat for 3 intervals)": "1",
        "in flight": "4",
        "handled per second": "5.0",
    }
