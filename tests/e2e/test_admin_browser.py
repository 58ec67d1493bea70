"""The operations console in a real browser: headless Chromium (Debian's package) driven by Playwright.

Orders are placed through the API in this process (the in-memory transport runs the
whole flow before the call returns), then a support person works in the admin served
by pytest-django's live_server. Each page is saved to artifacts/screenshots/.
"""

import datetime as dt
import os
import re
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone

from apps.mediator.models import Message, SagaState
from apps.orders.models import Order
from tests.unit.test_admin_scale import generate_history

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("CATGA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def browser():
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (.ci/run and `make test` do it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop in this thread; the ORM calls that the
    # tests make between browser steps are plain synchronous code all the same.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, live_server):
    context = browser.new_context(base_url=live_server.url, viewport={"width": 1440, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    yield tab
    context.close()


@pytest.fixture
def support(django_user_model):
    user = django_user_model.objects.create_user("support", password="pw-support-123", is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=["view_message", "view_delivery", "view_order"]))
    return user


@pytest.fixture
def ops(django_user_model):
    """Support who may also replay dead letters."""
    user = django_user_model.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    codenames = ["view_message", "view_delivery", "view_order", "view_sagastate", "replay_message"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


def shoot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000, f"{path} looks blank"
    return path


def log_in(page, username: str, password: str, next_url: str = "/admin/"):
    page.goto(f"/admin/login/?next={next_url}")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    page.wait_for_load_state()


def place(api, token="tok_visa", sku="SKU-A", quantity=1):
    response = api.post(
        "/api/orders/",
        {"customer_id": "cust-e2e", "lines": [{"sku": sku, "quantity": quantity}], "payment_token": token},
        format="json",
    )
    assert response.status_code == 202, response.content
    return Order.objects.get(pk=response.json()["id"])


def test_staff_opens_the_dashboard_from_the_admin_index_and_sees_the_chart_with_data(page, support, api, catalogue):
    generate_history(3_000, minutes=60)  # a busy hour behind the orders placed now
    place(api)
    place(api, token="tok_flaky")
    place(api, token="tok_declined", sku="SKU-B")

    log_in(page, "support", "pw-support-123")
    before = timezone.now()
    page.click("#catga-console >> text=Dashboard")
    page.wait_for_url("**/admin/mediator/message/dashboard/")
    after = timezone.now()

    chart = page.locator("svg#catga-chart")
    chart.wait_for()
    segments = chart.locator("rect.segment")
    assert segments.count() >= 2  # handled and published at least
    counts = segments.evaluate_all("rects => rects.map(r => Number(r.dataset.count))")
    # The window is the 60 whole minutes up to the moment of rendering, between `before` and `after`.
    surely_in = Message.objects.filter(created_at__gte=after - dt.timedelta(minutes=59)).count()
    maybe_in = Message.objects.filter(created_at__gte=before - dt.timedelta(minutes=60)).count()
    assert surely_in <= sum(counts) <= maybe_in
    heights = segments.evaluate_all("rects => rects.map(r => r.getBoundingClientRect().height)")
    assert all(h > 0 for h in heights), "every segment is visible on screen"
    bars = chart.locator("g.bar").evaluate_all("bars => bars.map(b => Number(b.dataset.total))")
    assert len(bars) == 60 and sum(1 for n in bars if n) >= 55
    assert page.locator(".legend-dead").inner_text() != "dead: 0"  # the generated hour has dead letters
    assert page.locator(".legend-handled").inner_text().startswith("handled: ")
    assert page.locator("#catga-timings tbody tr").count() >= 5
    assert page.locator(".catga-panel", has_text="Orders by status").locator("tr", has_text="Confirmed").inner_text()
    assert "n/a" in page.locator("#catga-consumers").inner_text()
    assert page.locator('meta[http-equiv="refresh"]').count() == 1
    shoot(page, "dashboard")


def test_support_finds_an_orders_conversation_by_searching_its_id(page, support, api, catalogue):
    order = place(api, token="tok_flaky")
    place(api)  # another order, which must not show up

    log_in(page, "support", "pw-support-123", next_url="/admin/mediator/message/")
    page.fill("#searchbar", order.id)
    page.press("#searchbar", "Enter")
    page.wait_for_url(re.compile(rf".*\?q={order.id}$"))
    size = Message.objects.filter(correlation_id=order.correlation_id).count()
    rows = page.locator("#result_list tbody tr")
    assert rows.count() == size >= 8
    assert rows.filter(has_text="payments.ChargePayment").locator("td.field-attempts").inner_text() == "3"
    shoot(page, "message-list-search")

    rows.first.locator("td.field-conversation a").click()
    page.wait_for_url(f"**/admin/mediator/message/conversation/{order.correlation_id}/")
    tree = page.locator("#catga-conversation tbody tr")
    assert tree.count() == size
    shown = tree.evaluate_all(
        "rows => rows.map(r => [r.dataset.id, r.dataset.cause, r.dataset.type, +r.dataset.depth])"
    )
    assert shown[0][2:] == ["orders.PlaceOrder", 0]
    position = {message_id: i for i, (message_id, *_) in enumerate(shown)}
    for message_id, cause, message_type, depth in shown[1:]:
        assert position[cause] < position[message_id], f"{message_type} comes after its cause"
        assert depth == shown[position[cause]][3] + 1, f"{message_type} is indented under its cause"
    chain = ["orders.PlaceOrder", "inventory.ReserveStock", "inventory.StockReserved", "payments.ChargePayment"]
    assert [next(d for _, _, t, d in shown if t == name) for name in chain] == [0, 1, 2, 3]
    handled = Message.objects.filter(correlation_id=order.correlation_id, deliveries__isnull=False).distinct()
    widths = page.locator(".catga-timeline .work").evaluate_all(
        "bars => bars.map(b => b.getBoundingClientRect().width)"
    )
    assert len(widths) == handled.count() >= 7 and min(widths) >= 1  # a visible bar per handled message
    shoot(page, "conversation")

    tree.filter(has_text="payments.ChargePayment").locator("a").first.click()
    page.wait_for_url("**/change/")
    attempts = page.locator(".catga-attempts tbody tr")
    assert attempts.count() == 3
    assert "provider timeout" in attempts.first.inner_text()
    assert "&quot;" not in page.locator(".field-payload_pretty pre").inner_text()
    assert '"order_id": "' + order.id in page.locator(".field-payload_pretty pre").inner_text()
    shoot(page, "message-detail")


def test_the_order_page_and_the_dashboard_search_lead_to_the_conversation(page, support, api, catalogue):
    order = place(api, token="tok_declined", sku="SKU-B")

    log_in(page, "support", "pw-support-123", next_url=f"/admin/orders/order/{order.id}/change/")
    page.click("text=what happened to this order")
    page.wait_for_url(f"**/conversation/{order.correlation_id}/")
    assert page.locator("#catga-conversation tbody tr", has_text="orders.OrderCancelled").count() == 1
    assert page.locator("#catga-conversation .work.status-handled").count() >= 5
    shoot(page, "order-conversation")

    page.goto("/admin/mediator/message/dashboard/?refresh=0")
    page.fill("#catga-find-q", order.id)
    page.click("#catga-dashboard-find input[type=submit], .catga-find input[type=submit]")
    page.wait_for_url(f"**/conversation/{order.correlation_id}/")


def test_a_non_staff_user_is_refused(page, customer):
    log_in(page, "customer", "pw-cust-123", next_url="/admin/mediator/message/dashboard/")
    assert "/admin/login/" in page.url
    assert "staff account" in page.locator(".errornote").inner_text()
    shoot(page, "non-staff-refused")

    page.goto("/admin/mediator/message/dashboard/")
    assert "/admin/login/" in page.url
    assert page.locator("svg#catga-chart").count() == 0


def undecodable_dead_letter() -> Message:
    """A message that arrived garbled: dead on arrival, with nothing valid to replay."""
    from apps.mediator.core.envelope import Envelope
    from apps.mediator.core.messages import QoS
    from apps.mediator.runtime import get_mediator
    from apps.payments.contracts import RefundPayment

    envelope = Envelope.for_message(RefundPayment(order_id="o-1", reason="r"), qos=QoS.AT_LEAST_ONCE)
    get_mediator().dispatcher.handle(envelope, b"\x00\x01 not json")
    return Message.objects.get(pk=envelope.id)


def test_ops_replays_a_dead_letter_after_confirming_and_the_order_completes(page, ops, api, catalogue, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_OUTAGE", "1")  # the payment provider is down: the charge dies after its retries
    order = place(api)
    charge = Message.objects.get(correlation_id=order.correlation_id, type="payments.ChargePayment")
    assert charge.status == "dead"
    assert api.get(f"/api/orders/{order.id}/").json()["status"] == "pending"
    garbled = undecodable_dead_letter()

    log_in(page, "ops", "pw-ops-123")
    page.locator("#catga-console a", has_text="Dead letters").click()
    page.wait_for_url("**/admin/mediator/deadletter/")
    row = page.locator("#result_list tbody tr", has_text=charge.pk)
    assert "payments.ChargePayment" in row.inner_text()
    assert "TransientError: provider outage" in row.locator("td.field-reason").inner_text()
    assert row.locator("td.field-attempts").inner_text() == "5"
    other = page.locator("#result_list tbody tr", has_text=garbled.pk)
    assert "cannot be replayed" in other.locator("td.field-reason").inner_text()
    shoot(page, "dead-letters")

    monkeypatch.delenv("FAKE_PROVIDER_OUTAGE")  # the provider is back
    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "replay_selected")
    page.click("button[name=index]")
    listed = page.locator("#catga-replay-list tbody tr")
    listed.first.wait_for()
    assert listed.count() == 1 and charge.pk in listed.first.inner_text()
    assert "admin:ops" in page.locator("#content-main").inner_text()
    assert Message.objects.get(pk=charge.pk).status == "dead", "nothing is replayed before confirming"
    shoot(page, "replay-confirmation")

    page.click("#catga-replay-confirm")
    page.wait_for_url("**/admin/mediator/deadletter/")
    note = page.locator("ul.messagelist").inner_text()
    assert f"Replayed payments.ChargePayment {charge.pk}: queued again" in note and "now handled" in note
    assert page.locator("#result_list tbody tr", has_text=charge.pk).count() == 0
    assert page.locator("#result_list tbody tr", has_text=garbled.pk).count() == 1
    assert api.get(f"/api/orders/{order.id}/").json()["status"] == "confirmed"

    page.goto(f"/admin/mediator/message/{charge.pk}/change/")
    assert "admin:ops" in page.locator("#catga-replays").inner_text()
    assert page.locator(".catga-attempts tr.attempt-replayed").count() == 1
    shoot(page, "message-replay-history")

    page.goto(f"/admin/orders/order/{order.id}/change/")
    page.click("text=its steps as a timeline")
    page.wait_for_url("**/admin/mediator/sagastate/*/change/")
    states = page.locator(".catga-step").evaluate_all("steps => steps.map(s => s.dataset.state)")
    assert states == ["completed", "completed", "completed"]
    shoot(page, "saga-detail-replayed")


def test_a_saga_page_shows_its_steps_and_timeline_with_the_compensation_marked(page, support, api, catalogue):
    Permission.objects.get(codename="view_sagastate").user_set.add(support)
    order = place(api, token="tok_declined", sku="SKU-B")
    state = SagaState.objects.get(correlation_id=order.correlation_id)

    log_in(page, "support", "pw-support-123", next_url="/admin/mediator/sagastate/?status__exact=failed")
    page.fill("#searchbar", order.id)
    page.press("#searchbar", "Enter")
    rows = page.locator("#result_list tbody tr")
    rows.first.wait_for()
    assert rows.count() == 1 and "payment_declined" in rows.first.inner_text()
    rows.first.locator("td.field-saga a").click()
    page.wait_for_url(f"**/admin/mediator/sagastate/{state.pk}/change/")

    steps = page.locator(".catga-step")
    assert steps.evaluate_all("s => s.map(e => e.dataset.state)") == ["compensated", "failed", "not_reached"]
    assert "completed, then compensated" in steps.first.inner_text()
    compensation = page.locator("#catga-saga-log tr.catga-compensation")
    assert compensation.count() == 1 and "inventory.ReleaseStock" in compensation.inner_text()
    tinted = compensation.locator("td").first.evaluate("td => getComputedStyle(td).backgroundColor")
    plain = page.locator("#catga-saga-log tr.event-started td").first.evaluate(
        "td => getComputedStyle(td).backgroundColor"
    )
    assert tinted != plain, "the compensation stands out"
    shoot(page, "saga-detail")

    page.click("#catga-saga-conversation")
    page.wait_for_url(f"**/conversation/{order.correlation_id}/")
    assert page.locator(".catga-saga-link", has_text="OrderSaga").count() == 1


def test_ops_adds_a_periodic_schedule_sees_a_bad_cron_refused_and_runs_it_now(page, django_user_model):
    from apps.mediator import runtime
    from apps.mediator.models import Schedule
    from apps.mediator.storage import schedules

    user = django_user_model.objects.create_user("planner", password="pw-planner-123", is_staff=True)
    codenames = ["view_message", "view_schedule", "add_schedule", "change_schedule"]
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    log_in(page, "planner", "pw-planner-123")
    page.locator("#catga-console a", has_text="Schedules").click()
    page.wait_for_url("**/admin/mediator/schedule/")
    page.click("a.addlink")
    page.fill("#id_name", "nightly-release")
    page.fill("#id_message_type", "inventory.ReleaseStock")
    page.fill("#id_payload", '{"order_id": "nightly", "reason": "schedule"}')
    page.fill("#id_cron", "30 25 * * *")
    page.fill("#id_timezone", "Europe/Paris")
    page.click("input[name=_save]")
    errors = page.locator("ul.errorlist")
    errors.first.wait_for()
    assert "hour: '25' is not in 0-23" in " ".join(errors.all_inner_texts())
    shoot(page, "schedule-refused")

    page.fill("#id_cron", "30 3 * * *")
    page.click("input[name=_save]")
    page.wait_for_url("**/admin/mediator/schedule/")
    row = page.locator("#result_list tbody tr", has_text="nightly-release")
    assert "30 3 * * * (Europe/Paris)" in row.inner_text()
    stored = Schedule.objects.get(pk="nightly-release")
    assert stored.next_run_at.astimezone(schedules.cron.zone("Europe/Paris")).strftime("%H:%M") == "03:30"
    shoot(page, "schedules")

    row.locator("input.action-select").check()
    page.select_option("select[name=action]", "run_now")
    page.click("button[name=index]")
    assert "will run within a second or two" in page.locator("ul.messagelist").inner_text()
    assert schedules.fire_due(runtime.get_mediator().post) == 1  # what the next consumer sweep does
    page.reload()
    row = page.locator("#result_list tbody tr", has_text="nightly-release")
    last = Schedule.objects.get(pk="nightly-release").last_message_id
    assert row.locator("td.field-last_message a").inner_text() == last
    assert Message.objects.get(pk=last).status == "handled"
