"""Observability without servers: the config file, the web probes, metrics, tracing, JSON logs,
the consumer's liveness and catga_status's error, with the in-memory transport and fakes."""

import asyncio
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import transaction
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import REGISTRY

from apps.inventory.contracts import ReleaseStock
from apps.mediator.consumer.health import HealthServer
from apps.mediator.consumer.worker import Worker
from apps.mediator.core.conf import DEFAULTS
from apps.mediator.core.envelope import Envelope
from apps.mediator.core.messages import Command, QoS
from apps.mediator.core.pipeline import HandlerContext, Pipeline
from apps.mediator.core.ports import Subscription
from apps.mediator.core.registry import HandlerSpec
from apps.mediator.models import Message
from apps.mediator.observability import MetricsBehavior, TracingBehavior, tracing
from apps.mediator.observability.logs import ContextFilter, JsonFormatter
from apps.mediator.runtime import mediator
from apps.mediator.servers.ports import free_port
from catga_site import config

ROOT = Path(__file__).resolve().parents[2]


class Ping(Command):
    n: int = 0

    class Meta:
        context = "obslab"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def metrics_page_check(page: bytes) -> None:
    """The exposition format as Prometheus reads it, and promtool's lint rules.

    prometheus_client's parser is the reference reader: a page it cannot parse fails here.
    On top, what `promtool check metrics` lints: HELP on every family, names in snake_case,
    counters ending in _total, no family twice. Where promtool itself is installed it runs too.
    """
    from prometheus_client.parser import text_string_to_metric_families

    problems, seen = [], set()
    for family in text_string_to_metric_families(page.decode()):
        if family.name in seen:
            problems.append(f"{family.name}: exposed twice")
        seen.add(family.name)
        if not family.documentation:
            problems.append(f"{family.name}: no HELP")
        if re.search(r"[A-Z]", family.name):
            problems.append(f"{family.name}: not snake_case")
        for sample in family.samples:
            if family.type == "counter" and not sample.name.endswith(("_total", "_created")):
                problems.append(f"{sample.name}: a counter's sample must end in _total")
    assert seen, "no metric families on the page"
    assert not problems, "\n".join(problems)
    promtool = shutil.which("promtool")
    if promtool:
        result = subprocess.run([promtool, "check", "metrics"], input=page, capture_output=True, timeout=30)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()


def test_the_metrics_check_refuses_a_malformed_page_and_promtools_lint_failures():
    good = b"# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total 1\n"
    metrics_page_check(good)
    for bad in (
        b"# HELP jobs_total Jobs.\n# TYPE jobs_total counter\njobs_total{x=1} 1\n",  # unquoted label
        b"# TYPE jobs_total counter\njobs_total 1\n",  # no HELP
        b"# HELP jobsDone Jobs.\n# TYPE jobsDone gauge\njobsDone 1\n",  # camelCase
    ):
        with pytest.raises((AssertionError, ValueError)):
            metrics_page_check(bad)


# -- the configuration file ---------------------------------------------------------


def test_the_kubernetes_config_file_is_valid_and_sets_qos_tracing_and_levels(monkeypatch):
    monkeypatch.delenv("LOG_LEVEL", raising=False)
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.delenv("CATGA_DEFAULT_QOS", raising=False)
    loaded = config.load(str(ROOT / "k8s" / "base" / "config" / "catga.json"))
    assert loaded.catga.enable_tracing is True
    assert config.qos(config.env_or("CATGA_DEFAULT_QOS", loaded.catga.default_qos, "AtMostOnce")) == "at_least_once"
    assert config.logging_settings(loaded)["root"]["level"] == "INFO"  # "Information", nested in Catga


@pytest.mark.parametrize(
    ("content", "named"),
    [
        ('{"Catga": {"EnableTracng": true}}', "`EnableTracng` - at `$.Catga`"),
        ('{"Catga": {"DefaultQoS": "Sometimes"}}', "$.Catga.DefaultQoS"),
        ('{"Catga": {"MaxAttempts": 0}}', "$.Catga.MaxAttempts"),
        ('{"Catga": {"EnableLogging": "yes"}}', "$.Catga.EnableLogging"),
        ('{"Logging": {"LogLevel": {"Default": "Loud"}}}', "$.Logging.LogLevel"),
        ('{"Catgaa": {}}', "`Catgaa`"),
        ('{"Catga": {"EnableTracing": true,}', "is not valid JSON"),
    ],
)
def test_a_bad_config_file_is_refused_naming_the_file_and_the_key(tmp_path, content, named):
    path = tmp_path / "catga.json"
    path.write_text(content)
    with pytest.raises(ImproperlyConfigured) as refused:
        config.load(str(path))
    assert str(path) in str(refused.value)
    assert named in str(refused.value)


def test_a_config_file_that_is_not_there_is_refused(tmp_path):
    with pytest.raises(ImproperlyConfigured, match="cannot read it"):
        config.load(str(tmp_path / "nope.json"))


def test_start_up_stops_on_a_malformed_config_file_naming_the_bad_key(tmp_path):
    bad = tmp_path / "catga.json"
    bad.write_text('{"Catga": {"EnableTracing": true, "DefaultQos": "AtLeastOnce"}}')  # QoS, not Qos
    env = {"PATH": "/usr/bin:/bin", "DJANGO_DEBUG": "1", "CATGA_DATA_DIR": str(tmp_path), "CATGA_CONFIG_FILE": str(bad)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "unknown field `DefaultQos`" in result.stderr

    bad.write_text('{"Catga": {"EnableTracing": false, "DefaultQoS": "ExactlyOnce"}}')
    ok = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0, ok.stderr


def test_the_environment_wins_over_the_file_and_the_file_over_the_defaults(tmp_path, monkeypatch):
    path = tmp_path / "catga.json"
    path.write_text(
        json.dumps(
            {
                "Catga": {"EnableLogging": False, "DefaultQoS": "ExactlyOnce", "MaxAttempts": 3},
                "Logging": {"LogLevel": {"Default": "Warning", "catga.worker": "Debug"}, "Format": "Json"},
            }
        )
    )
    for name in ("LOG_LEVEL", "LOG_FORMAT", "CATGA_MAX_ATTEMPTS", "CATGA_DEFAULT_QOS"):
        monkeypatch.delenv(name, raising=False)
    loaded = config.load(str(path))
    assert config.env_or("CATGA_MAX_ATTEMPTS", loaded.catga.max_attempts, 5, int) == 3
    assert config.env_or("CATGA_HANDLER_TIMEOUT", loaded.catga.handler_timeout, 30.0, float) == 30.0
    assert config.qos(config.env_or("CATGA_DEFAULT_QOS", loaded.catga.default_qos, "AtLeastOnce")) == "exactly_once"
    assert "apps.mediator.core.behaviors.LoggingBehavior" not in config.behaviors(loaded, DEFAULTS["BEHAVIORS"])
    logging_config = config.logging_settings(loaded)
    assert logging_config["root"]["level"] == "WARNING"
    assert logging_config["loggers"]["catga.worker"]["level"] == "DEBUG"
    assert logging_config["handlers"]["console"]["formatter"] == "json"

    monkeypatch.setenv("CATGA_MAX_ATTEMPTS", "9")
    monkeypatch.setenv("LOG_LEVEL", "Information")
    monkeypatch.setenv("LOG_FORMAT", "plain")
    assert config.env_or("CATGA_MAX_ATTEMPTS", loaded.catga.max_attempts, 5, int) == 9
    assert config.logging_settings(loaded)["root"]["level"] == "INFO"
    assert config.logging_settings(loaded)["handlers"]["console"]["formatter"] == "plain"
    monkeypatch.setenv("CATGA_MAX_ATTEMPTS", "many")
    with pytest.raises(ImproperlyConfigured, match="CATGA_MAX_ATTEMPTS='many'"):
        config.env_or("CATGA_MAX_ATTEMPTS", loaded.catga.max_attempts, 5, int)


def test_nats_credentials_come_from_the_environment_in_one_complete_style(tmp_path, monkeypatch):
    for name in ("NATS_TOKEN", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NATS_TOKEN", "s3cret")
    assert config.nats_credentials()["NATS_TOKEN"] == "s3cret"
    monkeypatch.setenv("NATS_USER", "app")
    with pytest.raises(ImproperlyConfigured, match="not several"):
        config.nats_credentials()
    monkeypatch.delenv("NATS_TOKEN")
    with pytest.raises(ImproperlyConfigured, match="go together"):
        config.nats_credentials()
    monkeypatch.setenv("NATS_PASSWORD", "pw")
    assert config.nats_credentials()["NATS_USER"] == "app"
    monkeypatch.delenv("NATS_USER")
    monkeypatch.delenv("NATS_PASSWORD")
    monkeypatch.setenv("NATS_CREDS", str(tmp_path / "missing.creds"))
    with pytest.raises(ImproperlyConfigured, match="no such file"):
        config.nats_credentials()


# -- web probes and /metrics --------------------------------------------------------


def test_liveness_answers_any_host_and_never_touches_the_database(client):
    # No django_db mark: a query would fail this test.
    live = client.get("/health/live", HTTP_HOST="10.42.0.7", HTTP_ACCEPT="application/json")
    assert live.status_code == 200
    assert live.json() == {"Process()": "OK"}
    assert client.get("/health/live/", HTTP_HOST="10.42.0.7").status_code == 200  # HTML, trailing slash
    # Everything else still checks the Host header.
    assert client.get("/api/inventory/items/", HTTP_HOST="10.42.0.7").status_code == 400


@pytest.mark.django_db
def test_readiness_checks_the_database_and_nats_and_says_which_failed(client, settings):
    ready = client.get("/health/ready?format=json", HTTP_HOST="10.42.0.7")
    assert ready.status_code == 200, ready.content
    assert ready.json() == {"Database(alias='default')": "OK", "Nats()": "OK"}  # in memory: nothing to lose

    settings.CATGA = {
        **settings.CATGA,
        "TRANSPORT": "apps.mediator.transports.nats.publisher.NatsTransport",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    down = client.get("/health/ready?format=json", HTTP_HOST="10.42.0.7")
    assert down.status_code == 503
    assert down.json() == {"Database(alias='default')": "OK", "Nats()": "Unavailable: not connected to NATS"}
    assert client.get("/health/live", HTTP_HOST="10.42.0.7").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_web_metrics_page_is_valid_and_counts_what_this_process_sent_and_handled(client):
    labels = {"type": "inventory.ReleaseStock", "kind": "command", "context": "inventory"}
    sent_before = sample("catga_messages_sent_total", **labels, qos="at_least_once")
    handled_before = sample("catga_messages_handled_total", **labels, outcome="succeeded")
    timed_before = sample("catga_message_handling_seconds_count", **labels)
    for i in range(5):
        with transaction.atomic():
            mediator.send(ReleaseStock(order_id=f"metrics-{i}", reason="counted"))
    assert sample("catga_messages_sent_total", **labels, qos="at_least_once") == sent_before + 5
    assert sample("catga_messages_handled_total", **labels, outcome="succeeded") == handled_before + 5
    assert sample("catga_message_handling_seconds_count", **labels) == timed_before + 5
    assert sample("catga_messages_in_flight", context="inventory") == 0

    page = client.get("/metrics", HTTP_HOST="10.42.0.7")  # Prometheus scrapes the pod IP
    assert page.status_code == 200
    text = page.content.decode()
    assert "django_http_requests_total_by_method_total" in text
    assert 'catga_messages_handled_total{context="inventory",kind="command",outcome="succeeded"' in text
    metrics_page_check(page.content)


def test_a_rolled_back_send_is_not_counted_and_a_failing_handler_counts_as_failed(db):
    labels = {"type": "obslab.Ping", "kind": "command", "context": "obslab"}
    failed_before = sample("catga_messages_handled_total", **labels, outcome="failed")

    def boom(message, ctx):
        raise RuntimeError("kettle unplugged")

    envelope = Envelope.for_message(Ping(), qos=QoS.AT_LEAST_ONCE)
    with pytest.raises(RuntimeError):
        Pipeline([MetricsBehavior()]).run(
            Ping(), HandlerContext(envelope=envelope, handler=HandlerSpec("obslab", boom))
        )
    assert sample("catga_messages_handled_total", **labels, outcome="failed") == failed_before + 1
    assert sample("catga_messages_in_flight", context="obslab") == 0

    sent = {"type": "inventory.ReleaseStock", "kind": "command", "context": "inventory", "qos": "at_least_once"}
    sent_before = sample("catga_messages_sent_total", **sent)
    with pytest.raises(RuntimeError), transaction.atomic():
        mediator.send(ReleaseStock(order_id="ghost", reason="rolled back"))
        raise RuntimeError("the view failed after sending")
    assert sample("catga_messages_sent_total", **sent) == sent_before


# -- tracing and logs --------------------------------------------------------------


@pytest.fixture
def spans():
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.activate(provider)
    yield exporter
    tracing.deactivate()


@pytest.mark.django_db(transaction=True)
def test_a_send_and_its_handling_are_one_trace_through_the_envelope(spans):
    outer = trace.get_tracer("test", tracer_provider=tracing._provider)
    with outer.start_as_current_span("POST /api/orders/") as request_span, transaction.atomic():
        handle = mediator.send(ReleaseStock(order_id="traced", reason="trace me"))
    finished = {span.name: span for span in spans.get_finished_spans()}
    send, process = finished["send inventory.ReleaseStock"], finished["process inventory.ReleaseStock"]
    trace_id = request_span.get_span_context().trace_id
    assert {send.context.trace_id, process.context.trace_id} == {trace_id}
    assert send.kind is SpanKind.PRODUCER and send.parent.span_id == request_span.get_span_context().span_id
    assert process.kind is SpanKind.CONSUMER and process.parent.span_id == send.context.span_id
    assert process.attributes["messaging.message.id"] == handle.message_id
    # The outbox row keeps the context, so the relay and replays carry it on.
    stored = Message.objects.get(pk=handle.message_id).headers["traceparent"]
    assert stored.split("-")[1:3] == [f"{trace_id:032x}", f"{send.context.span_id:016x}"]


def test_the_sampler_is_the_operators_when_otel_traces_sampler_is_set(monkeypatch):
    from opentelemetry.sdk.trace import TracerProvider

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    default = TracerProvider(sampler=tracing.configured_sampler(), shutdown_on_exit=False).sampler
    assert "NoOrphanQueries" in default.get_description()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    sampler = TracerProvider(sampler=tracing.configured_sampler(), shutdown_on_exit=False).sampler
    assert sampler.get_description() == "TraceIdRatioBased{0.25}"


def test_with_tracing_off_the_hooks_pass_messages_through_untouched():
    assert not tracing.enabled()
    envelope = Envelope.for_message(Ping(), qos=QoS.AT_LEAST_ONCE)
    assert tracing.stamp(envelope) is envelope
    calls = []
    spec = HandlerSpec("obslab", lambda message, ctx: calls.append(ctx) or "done")
    assert Pipeline([TracingBehavior()]).run(Ping(), HandlerContext(envelope=envelope, handler=spec)) == "done"
    assert len(calls) == 1
    assert not trace.get_current_span().get_span_context().is_valid


@pytest.mark.django_db(transaction=True)
def test_json_log_lines_carry_level_logger_message_and_the_three_ids(spans):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("catga.handler")
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        with transaction.atomic():
            handle = mediator.send(ReleaseStock(order_id="logged", reason="log me"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    line = next(entry for entry in lines if entry["message_id"] == handle.message_id)
    process = next(s for s in spans.get_finished_spans() if s.name == "process inventory.ReleaseStock")
    assert line["level"] == "DEBUG"
    assert line["logger"] == "catga.handler"
    assert line["message"].startswith("inventory.ReleaseStock handled by inventory:")
    assert line["correlation_id"] == handle.message_id  # it started the conversation
    assert line["trace_id"] == f"{process.context.trace_id:032x}"
    assert line["message_type"] == "inventory.ReleaseStock"


# -- the consumer's liveness --------------------------------------------------------


class HangingPull:
    """A subscription whose fetch never returns, as after a reconnect gone wrong."""

    name, context = "obslab_cmd", "obslab"

    async def fetch(self, most, timeout, spawn):
        await asyncio.Event().wait()


class EmptyPull:
    """A healthy idle subscription: every fetch comes back empty after its timeout."""

    name, context = "obslab_cmd", "obslab"

    async def fetch(self, most, timeout, spawn):
        await asyncio.sleep(min(timeout, 0.05))


def liveness_after(subscription, *, observe: float) -> tuple[bool, bool]:
    """Run a worker's fetch loop on `subscription`; (live at start, live after `observe` seconds)."""

    async def scenario():
        from apps.mediator.consumer.handler_pool import HandlerPool
        from apps.mediator.consumer.slots import Slots

        assert isinstance(subscription, Subscription)
        worker = Worker(dispatcher=None, transport=None, contexts=["obslab"], concurrency=2)
        worker.slots = Slots(2)
        worker.pool = HandlerPool(asyncio.get_running_loop(), 2)
        worker.subscriptions = [subscription]
        health = HealthServer(worker)
        task = asyncio.create_task(worker._fetch_loop(subscription))
        first = health.checks()["live"]["ok"]
        await asyncio.sleep(observe)
        status, _, body = health._route("/health/live")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert status.startswith("200") == json.loads(body)["ok"]
        return first, json.loads(body)["ok"]

    return asyncio.run(scenario())


def test_a_pull_that_never_returns_turns_consumer_liveness_false(settings):
    settings.CATGA = {**settings.CATGA, "LIVENESS_WINDOW": 0.3}
    assert liveness_after(HangingPull(), observe=0.6) == (True, False)
    # An idle consumer whose pulls come back empty stays live well past the window.
    assert liveness_after(EmptyPull(), observe=0.6) == (True, True)


# -- catga_status -------------------------------------------------------------------


@pytest.mark.django_db
def test_catga_status_says_clearly_when_nats_is_unreachable(settings):
    settings.CATGA = {
        **settings.CATGA,
        "TRANSPORT": "apps.mediator.transports.nats.publisher.NatsTransport",
        "NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }
    with pytest.raises(CommandError, match="NATS is unreachable"):
        call_command("catga_status")
