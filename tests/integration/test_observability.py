"""Probes, metrics, traces and logs of real processes over a real NATS server.

This test process plays the web (Django test client, or gunicorn for the
multiprocess metrics); consumers are `run_consumer` child processes.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal

import nats
import pytest
from django.db import transaction
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families

from apps.inventory.contracts import ReleaseStock
from apps.mediator import runtime
from apps.mediator.core.conf import catga_settings
from apps.mediator.observability import tracing
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import free_port, wait_until
from apps.orders.models import Order
from apps.payments.contracts import ChargePayment
from tests.integration.conftest import ROOT, probe
from tests.integration.helpers import CONTEXTS
from tests.unit.test_observability import metrics_page_check

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

POD_IP = "10.244.1.17"  # what the kubelet and Prometheus put in Host; not in ALLOWED_HOSTS


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read()


def value(page: bytes, name: str, **labels) -> float:
    """A sample of a scraped page (0 when absent)."""
    for family in text_string_to_metric_families(page.decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def holds(predicate, *, seconds: float, interval: float = 0.2) -> None:
    """Assert `predicate` stays true for `seconds` (checked every `interval`)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate()
        time.sleep(interval)


def send_many(n: int, prefix: str) -> None:
    for i in range(n):
        with transaction.atomic():
            mediator.send(ReleaseStock(order_id=f"{prefix}-{i}", reason="observability test"))


def needs_own_nats():
    if os.environ.get("NATS_URL_TEST"):
        pytest.fail("this test stops NATS and needs the session's own nats-server (unset NATS_URL_TEST)")


# -- probes --------------------------------------------------------------------------


def test_probes_with_nats_up_down_and_frozen_ready_follows_nats_live_stays(client, workers, nats_server):
    needs_own_nats()
    worker = workers.start("inventory", CATGA_LIVENESS_WINDOW="3", CATGA_NATS_PING_INTERVAL="1")

    def web(path):
        return client.get(path, HTTP_HOST=POD_IP, HTTP_ACCEPT="application/json")

    def consumer(path):
        return probe(worker.health_port, path)

    # A process whose publisher has not connected yet (a new or recycled gunicorn worker)
    # connects on its first probe and answers ready from it: a 503 there flapped pods.
    runtime.reset()
    first = web("/health/ready")
    assert first.status_code == 200, first.content
    assert first.json() == {"Database(alias='default')": "OK", "Nats()": "OK"}
    assert consumer("/health/ready") == consumer("/health/live") == 200

    nats_server.stop()
    try:
        wait_until(lambda: consumer("/health/ready") == 503, timeout=20, what="consumer not ready")
        assert "NATS disconnected; reconnecting" in workers.logs()  # an outage is
        wait_until(lambda: web("/health/ready").status_code == 503, timeout=20, what="web not ready")
        assert web("/health/ready").json()["Nats()"] == "Unavailable: not connected to NATS"
        # Restarting a pod cannot bring NATS back: liveness stays true, past its 3 s window.
        holds(lambda: consumer("/health/live") == 200 and web("/health/live").status_code == 200, seconds=4)
    finally:
        nats_server.start()
    wait_until(lambda: consumer("/health/ready") == 200, timeout=30, what="consumer ready again")
    wait_until(lambda: web("/health/ready").status_code == 200, timeout=30, what="web ready again")

    # A NATS that accepts connections but answers nothing (frozen): the web's readiness
    # still answers, within the kubelet's 3 s probe timeout, and says not ready.
    nats_server.proc.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        frozen = web("/health/ready")
        elapsed = time.monotonic() - started
        # The consumer's connection stays open to a frozen server: missed pings tell.
        wait_until(lambda: consumer("/health/ready") == 503, timeout=15, what="consumer not ready, NATS frozen")
        assert consumer("/health/live") == 200
    finally:
        nats_server.proc.send_signal(signal.SIGCONT)
    assert frozen.status_code == 503
    assert "did not answer" in frozen.json()["Nats()"]
    assert elapsed < 3.0, f"readiness took {elapsed:.1f}s with NATS frozen"
    wait_until(lambda: web("/health/ready").status_code == 200, timeout=30, what="web ready after thaw")
    wait_until(lambda: consumer("/health/ready") == 200, timeout=30, what="consumer ready after thaw")


def test_consumer_liveness_turns_false_when_wedged_handlers_stall_its_loop(workers):
    # One handler thread; the payment provider hangs far past the handler timeout. The
    # timed-out thread cannot be stopped, the charges fetched after it wait for a thread,
    # and once they hold every in-flight slot the fetch loop can make no progress.
    worker = workers.start(
        "payments",
        extra_args=["--concurrency", "1"],
        FAKE_PROVIDER_DELAY="6",
        CATGA_HANDLER_TIMEOUT="0.5",
        CATGA_LIVENESS_WINDOW="2",
        CATGA_SHUTDOWN_GRACE="1",
    )
    port = worker.health_port
    holds(lambda: probe(port, "/health/live") == 200, seconds=3)  # idle, past the window: live

    slots = 1 * getattr(catga_settings, "PREFETCH_MULTIPLIER", 1)  # in flight per handler thread
    for i in range(slots + 1):
        # Payments charges only what an order costs, so the orders exist.
        Order.objects.create(id=f"wedged-{i}", customer_id="c", total=Decimal("1.00"), payment_token="tok_visa")
        with transaction.atomic():
            mediator.send(ChargePayment(order_id=f"wedged-{i}", amount=Decimal("1.00"), token="tok_visa"))
    wait_until(lambda: probe(port, "/health/live") == 503, timeout=20, what="liveness to fail")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=5) as response:
        assert json.loads(response.read())["connected"] is True  # connected and bound: only a restart helps


# -- metrics and catga_status ----------------------------------------------------------


def test_consumer_metrics_move_by_the_messages_handled_and_pass_promtool(workers, nats_settings):
    worker = workers.start("inventory", CATGA_METRICS_INTERVAL="0.5")
    port = worker.health_port
    labels = {"type": "inventory.ReleaseStock", "kind": "command", "context": "inventory"}
    assert value(scrape(port), "catga_messages_handled_total", **labels, outcome="succeeded") == 0

    send_many(7, "metrics")
    wait_until(
        lambda: value(scrape(port), "catga_messages_handled_total", **labels, outcome="succeeded") == 7,
        timeout=30,
        what="7 handled messages counted",
    )

    async def publish_garbage():
        nc = await nats.connect(nats_settings.CATGA["NATS_URL"])
        headers = {"Catga-Message-Id": "garbage-1", "Catga-Type": "inventory.ReleaseStock", "Catga-Kind": "command"}
        await nc.jetstream().publish("catga.inventory.cmd.ReleaseStock", b"{not json", headers=headers)
        await nc.close()

    asyncio.run(publish_garbage())
    wait_until(
        lambda: value(scrape(port), "catga_dead_letters") == 1,
        timeout=30,
        what="the dead letter in the gauge",
    )
    page = scrape(port)
    assert value(page, "catga_messages_handled_total", **labels, outcome="succeeded") == 7  # garbage is not handled
    assert value(page, "catga_messages_dead_lettered_total", type="inventory.ReleaseStock", context="inventory") == 1
    assert value(page, "catga_message_handling_seconds_count", **labels) == 7
    assert value(page, "catga_stream_messages", stream="CATGA_DLQ") == 1
    assert value(page, "catga_consumer_pending", stream="CATGA_CMD", consumer="inventory_cmd") == 0
    assert value(page, "catga_consumer_ack_pending", stream="CATGA_CMD", consumer="inventory_cmd") == 0
    assert value(page, "catga_outbox_backlog") == 0
    metrics_page_check(page)

    status = workers.run("catga_status", "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["dead_letters"] == 1
    assert report["outbox"]["pending"] == 0
    by_name = {c["name"]: c for c in report["consumers"]}
    assert by_name["inventory_cmd"]["pending"] == 0 and by_name["inventory_cmd"]["ack_pending"] == 0
    assert {s["name"]: s["messages"] for s in report["streams"]}["CATGA_CMD"] == 8
    table = workers.run("catga_status")
    assert "inventory_cmd" in table.stdout and "dead letters: 1 in the stream" in table.stdout

    unreachable = workers.run("catga_status", NATS_URL=f"nats://127.0.0.1:{free_port()}")
    assert unreachable.returncode != 0
    assert "NATS is unreachable" in unreachable.stderr


def test_gunicorn_workers_share_one_metrics_page_and_answer_probes_for_any_host(workers, tmp_path):
    """Multiprocess metrics as in the web pod: two gunicorn workers, one PROMETHEUS_MULTIPROC_DIR."""
    port = free_port()
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left over by a previous run")  # cleaned at start
    env = workers.env(
        CATGA_TRANSPORT="memory",
        DJANGO_ALLOWED_HOSTS="127.0.0.1",
        GUNICORN_BIND=f"127.0.0.1:{port}",
        WEB_CONCURRENCY="2",
        GUNICORN_THREADS="2",
        GUNICORN_WORKER_TMP_DIR=str(tmp_path),
        GUNICORN_CONTROL_SOCKET=str(tmp_path / "gunicorn.ctl"),
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "catga_site/gunicorn.conf.py", "catga_site.wsgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )

    def get(path, host="127.0.0.1"):
        # As behind the ingress, which terminates TLS (production settings redirect plain HTTP).
        headers = {"Host": host, "X-Forwarded-Proto": "https"}
        request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return None, b""

    try:
        wait_until(lambda: get("/health/live", POD_IP)[0] == 200, timeout=60, what="gunicorn to serve")
        assert not (metrics_dir / "counter_999999.db").exists()
        assert get("/api/inventory/items/", POD_IP)[0] == 400  # the rest of the site checks Host

        served = 0

        def both_workers_served():
            nonlocal served
            assert get("/api/inventory/items/")[0] == 200
            served += 1
            pids = {path.stem.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}
            return len(pids) >= 2 and served >= 10

        wait_until(both_workers_served, timeout=60, interval=0.01, what="requests on both gunicorn workers")
        status, page = get("/metrics", POD_IP)
        assert status == 200
        # Whichever worker answers the scrape, the page counts every worker's requests.
        labels = {"method": "GET", "status": "200", "view": "item-list"}
        assert value(page, "django_http_responses_total_by_status_view_method_total", **labels) == served
        assert value(get("/metrics")[1], "django_http_responses_total_by_status_view_method_total", **labels) == served
        metrics_page_check(page)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode == 0, log.read_text(errors="replace")[-3000:]


# -- one trace across processes, JSON logs ---------------------------------------------


@pytest.fixture
def web_spans():
    """Trace this process (the web) into memory, with the Django instrumentation on."""
    provider = TracerProvider(resource=Resource.create({"service.name": "catga-web-test"}))
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.activate(provider)
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=provider, excluded_urls=tracing.EXCLUDED_URLS)
    yield exporter
    instrumentor.uninstrument()
    tracing.deactivate()


def spans_in(path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_one_order_is_one_trace_from_the_web_request_through_every_consumer(
    api, catalogue, workers, web_spans, tmp_path
):
    config_file = tmp_path / "catga.json"
    config_file.write_text(
        json.dumps(
            {
                "Catga": {"EnableTracing": True},
                "Logging": {"LogLevel": {"Default": "Information", "catga.handler": "Debug"}, "Format": "Json"},
            }
        )
    )
    files = {}
    for context in CONTEXTS:
        files[context] = tmp_path / f"spans-{context}.jsonl"
        workers.start(
            context,
            CATGA_CONFIG_FILE=str(config_file),
            CATGA_TRACE_FILE=str(files[context]),
            LOG_FORMAT="",  # empty: unset, so the file's Format and LogLevel apply
            LOG_LEVEL="",
            OTEL_SERVICE_NAME=f"catga-consumer-{context}",
        )

    response = api.post(
        "/api/orders/",
        {"customer_id": "c-trace", "lines": [{"sku": "SKU-A", "quantity": 1}], "payment_token": "tok_visa"},
        format="json",
    )
    assert response.status_code == 202, response.content
    order_id = response.json()["id"]
    wait_until(lambda: Order.objects.get(pk=order_id).status == "confirmed", timeout=60, what="order to be confirmed")

    request = next(s for s in web_spans.get_finished_spans() if s.kind is SpanKind.SERVER)
    trace_id = f"0x{request.context.trace_id:032x}"
    expected = {
        "inventory": "process inventory.ReserveStock",
        "payments": "process payments.ChargePayment",
        "orders": "process payments.PaymentCaptured",
    }

    def consumer_spans():
        found = {
            context: [s for s in spans_in(path) if s["context"]["trace_id"] == trace_id]
            for context, path in files.items()
        }
        names = {context: {s["name"] for s in spans} for context, spans in found.items()}
        return found if all(expected[c] in names[c] for c in expected) else None

    found = wait_until(consumer_spans, timeout=30, what=f"consumer spans of trace {trace_id}")

    # Every consumer span hangs off a send span of the same trace (in the web or another consumer).
    web = [
        {"name": s.name, "context": {"span_id": f"0x{s.context.span_id:016x}"}} for s in web_spans.get_finished_spans()
    ]
    everything = web + [s for spans in found.values() for s in spans]
    sends = {s["context"]["span_id"] for s in everything if s["name"].startswith("send ")}
    # (A query asked in-process, payments asking orders for the order's total, is an internal
    # span of its handler's, not a consumer's.)
    processes = [s for spans in found.values() for s in spans if s["kind"] == "SpanKind.CONSUMER"]
    assert processes and all(s["parent_id"] in sends for s in processes), processes
    assert {s["resource"]["attributes"]["service.name"] for s in found["payments"]} == {"catga-consumer-payments"}

    # The consumers log JSON lines carrying the same trace id (config file: Format Json, catga.handler Debug).
    log_lines = []
    for _, _, log in workers.procs:
        log_lines += [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    handled = [line for line in log_lines if line["logger"] == "catga.handler" and line["trace_id"] == trace_id[2:]]
    assert handled, log_lines[-5:]
    assert all(line["message_id"] and line["correlation_id"] and line["level"] == "DEBUG" for line in handled)
