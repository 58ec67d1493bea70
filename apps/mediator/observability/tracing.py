"""OpenTelemetry tracing: a span per send and per handling, one trace per conversation.

A send opens a PRODUCER span and writes its W3C trace context into the envelope
(`traceparent`/`tracestate`, NATS headers on the wire, the history row's headers
in the outbox); the handling opens a CONSUMER span whose parent is extracted from
that envelope. So a REST request, the commands it sends and every handler they
reach in other processes share one trace id.

Switched on by CATGA["TRACING"] (EnableTracing in the config file, CATGA_TRACING,
or an OTLP endpoint in the environment) and only when there is somewhere to send
spans: OTLP over HTTP (CATGA["TRACE_OTLP"]; the exporter reads the standard
OTEL_EXPORTER_OTLP_* variables) or a JSON-lines file (CATGA["TRACE_FILE"], for
debugging and the tests). Off, every hook is one `is None` check.
"""

import atexit
import logging
import os
import threading
from collections.abc import Sequence

import msgspec
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from apps.mediator.core.conf import catga_settings

logger = logging.getLogger("catga.tracing")

_tracer: trace.Tracer | None = None
_provider = None
_propagator = TraceContextTextMapPropagator()

# Probes and scrapes are not worth a trace each.
EXCLUDED_URLS = "health/live,health/ready,metrics"


def enabled() -> bool:
    return _tracer is not None


def activate(provider) -> None:
    """Record spans with this TracerProvider (tests pass one with an in-memory exporter)."""
    global _tracer, _provider
    _provider = provider
    _tracer = provider.get_tracer("catga.mediator")


def deactivate() -> None:
    global _tracer, _provider
    _tracer = _provider = None


# -- the two hooks -------------------------------------------------------------


def stamp(envelope):
    """A PRODUCER span for this send; returns the envelope carrying its trace context."""
    tracer = _tracer
    if tracer is None:
        return envelope
    span = tracer.start_span(f"send {envelope.type}", kind=SpanKind.PRODUCER, attributes=_attributes(envelope, "send"))
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=trace.set_span_in_context(span))
    span.end()
    return msgspec.structs.replace(
        envelope, traceparent=carrier.get("traceparent"), tracestate=carrier.get("tracestate") or None
    )


class TracingBehavior:
    """A span around each handler run, child of the sender's span; list it first in CATGA["BEHAVIORS"]."""

    def __call__(self, message, ctx, call_next):
        tracer = _tracer
        if tracer is None:
            return call_next(message, ctx)
        env = ctx.envelope
        parent = _extract(env)
        attributes = _attributes(env, "process")
        attributes["catga.handler"] = ctx.handler.name
        attributes["catga.context"] = ctx.handler.context
        with tracer.start_as_current_span(
            f"process {env.type}",
            context=parent,
            # Handled in-process (execute, ask): a step of the current span, not a consumer.
            kind=SpanKind.CONSUMER if parent is not None else SpanKind.INTERNAL,
            attributes=attributes,
        ):
            return call_next(message, ctx)


def _extract(envelope):
    if not envelope.traceparent:
        return None
    carrier = {"traceparent": envelope.traceparent}
    if envelope.tracestate:
        carrier["tracestate"] = envelope.tracestate
    return _propagator.extract(carrier)


def _attributes(envelope, operation: str) -> dict:
    return {
        "messaging.system": "nats",
        "messaging.operation.type": operation,
        "messaging.message.id": envelope.id,
        "messaging.message.conversation_id": envelope.correlation_id,
        "catga.message.type": envelope.type,
        "catga.message.kind": envelope.kind.value,
        "catga.attempt": envelope.attempt,
    }


# -- set-up ----------------------------------------------------------------------


class JsonLinesExporter(SpanExporter):
    """Finished spans as JSON lines in a file (CATGA["TRACE_FILE"]): no collector needed."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence) -> SpanExportResult:
        lines = "".join(span.to_json(indent=None) + "\n" for span in spans)
        with self._lock, open(self.path, "a", encoding="utf-8") as handle:
            handle.write(lines)
        return SpanExportResult.SUCCESS


class NoOrphanQueries(Sampler):
    """Root sampler that drops client spans (database queries) with no parent.

    The outbox relay, the metrics refresh and readiness probes query the database
    every few seconds outside any request or message: each query would otherwise be
    a trace of its own. Queries of a request or a handled message have a parent and
    are kept (ParentBased never asks this sampler about them).
    """

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        if kind is SpanKind.CLIENT:  # the DB instrumentations set db.* attributes only after sampling
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return "NoOrphanQueries"


def setup() -> bool:
    """Install the tracer provider and instrumentation that the settings ask for; True if tracing is on."""
    if not catga_settings.TRACING or enabled():
        return enabled()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors = []
    if catga_settings.TRACE_OTLP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if catga_settings.TRACE_FILE:
        processors.append(SimpleSpanProcessor(JsonLinesExporter(catga_settings.TRACE_FILE)))
    if not processors:
        logger.info("tracing is enabled but no exporter is configured (set OTEL_EXPORTER_OTLP_ENDPOINT); it stays off")
        return False
    provider = TracerProvider(
        resource=Resource.create({"service.name": catga_settings.SERVICE_NAME}),
        sampler=configured_sampler(),
    )
    for processor in processors:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)
    activate(provider)
    instrument(provider)
    atexit.register(provider.shutdown)
    return True


def configured_sampler() -> Sampler | None:
    """The operator's OTEL_TRACES_SAMPLER (and _ARG) when set — None lets the SDK read them —
    otherwise parent-based, with root query spans dropped (NoOrphanQueries)."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    return ParentBased(root=NoOrphanQueries())


def instrument(provider) -> None:
    """Django requests and database queries, as spans of the same traces."""
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument(tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    PsycopgInstrumentor().instrument(tracer_provider=provider, skip_dep_check=True)
