"""The mediator's Prometheus metrics: the same names in the web and in the consumers.

    catga_messages_sent_total{type,kind,context,qos}              sent or published (after commit)
    catga_messages_handled_total{type,kind,context,outcome}       handler runs: succeeded | failed
    catga_message_handling_seconds{type,kind,context}             handler duration (histogram)
    catga_messages_in_flight{context}                             handlers running now
    catga_messages_retried_total{type,context}                    NAKed for a later attempt
    catga_messages_dead_lettered_total{type,context}              moved to the dead-letter stream
    catga_outbox_backlog                                          outbox rows not yet published
    catga_consumer_pending{stream,consumer}                       JetStream: not yet delivered
    catga_consumer_ack_pending{stream,consumer}                   JetStream: delivered, not acked
    catga_consumer_redelivered{stream,consumer}                   JetStream: redelivered, not acked
    catga_stream_messages{stream}, catga_stream_bytes{stream}      JetStream stream sizes
    catga_dead_letters                                            messages in the dead-letter stream

`context` is the bounded context whose handler ran (or that owns the message, for
sends); `type` is the message's wire name, and only ever a registered one, so a
hostile header cannot grow the label set. The gauges set from JetStream and the
outbox are refreshed by run_consumer every CATGA["METRICS_INTERVAL"] seconds.

Under gunicorn with PROMETHEUS_MULTIPROC_DIR set, prometheus_client writes every
worker's values to that directory and django-prometheus's /metrics sums them; the
gauges say how (`livesum` for in-flight, `max` for the shared backlog and lag).
"""

import time

from prometheus_client import Counter, Gauge, Histogram

from apps.mediator.core.messages import message_type

SENT = Counter(
    "catga_messages_sent",
    "Messages sent or published by this process, counted once their transaction committed.",
    ["type", "kind", "context", "qos"],
)
HANDLED = Counter(
    "catga_messages_handled",
    "Handler runs that finished, by message type and kind, the handler's context and the outcome.",
    ["type", "kind", "context", "outcome"],
)
DURATION = Histogram(
    "catga_message_handling_seconds",
    "Time a handler took, behaviors included.",
    ["type", "kind", "context"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
IN_FLIGHT = Gauge(
    "catga_messages_in_flight",
    "Handlers running right now.",
    ["context"],
    multiprocess_mode="livesum",
)
RETRIED = Counter(
    "catga_messages_retried",
    "Deliveries handed back to JetStream for a later attempt (transient failure or timeout).",
    ["type", "context"],
)
DEAD_LETTERED = Counter(
    "catga_messages_dead_lettered",
    "Deliveries moved to the dead-letter stream (permanent failure, attempts exhausted, undecodable).",
    ["type", "context"],
)
DEFERRED = Counter(
    "catga_messages_deferred",
    "Deliveries retried because the database was unreachable (no attempt spent).",
    ["type", "context"],
)
SAGAS_STUCK = Counter(
    "catga_sagas_stuck",
    "Sagas that became stuck: a pivot step's command is a dead letter (an operator must act).",
    ["saga"],
)
OUTBOX_BACKLOG = Gauge(
    "catga_outbox_backlog",
    "Outbox rows committed but not yet published to NATS.",
    multiprocess_mode="max",
)
CONSUMER_PENDING = Gauge(
    "catga_consumer_pending",
    "Messages in the stream not yet delivered to this durable consumer.",
    ["stream", "consumer"],
    multiprocess_mode="max",
)
CONSUMER_ACK_PENDING = Gauge(
    "catga_consumer_ack_pending",
    "Messages delivered to this durable consumer and not yet acknowledged.",
    ["stream", "consumer"],
    multiprocess_mode="max",
)
CONSUMER_REDELIVERED = Gauge(
    "catga_consumer_redelivered",
    "Messages redelivered to this durable consumer and not yet acknowledged.",
    ["stream", "consumer"],
    multiprocess_mode="max",
)
STREAM_MESSAGES = Gauge("catga_stream_messages", "Messages stored in the stream.", ["stream"], multiprocess_mode="max")
STREAM_BYTES = Gauge("catga_stream_bytes", "Bytes stored in the stream.", ["stream"], multiprocess_mode="max")
DEAD_LETTERS = Gauge("catga_dead_letters", "Messages in the dead-letter stream (replayable).", multiprocess_mode="max")

UNKNOWN = "unknown"


def _known(type_name: str) -> str:
    return type_name if message_type(type_name) is not None else UNKNOWN


def _owner(type_name: str) -> str:
    cls = message_type(type_name)
    return cls.options.context if cls is not None else UNKNOWN


def count_sent(envelope) -> None:
    SENT.labels(_known(envelope.type), envelope.kind.value, _owner(envelope.type), envelope.qos.value).inc()


def count_settled(type_name: str, context: str, action: str, *, outage: bool = False) -> None:
    """The worker's settlement of one delivery: "retry" and "dead" are counted, outage retries apart."""
    if outage:
        DEFERRED.labels(_known(type_name), context or UNKNOWN).inc()
    elif action == "retry":
        RETRIED.labels(_known(type_name), context or UNKNOWN).inc()
    elif action == "dead":
        DEAD_LETTERED.labels(_known(type_name), context or UNKNOWN).inc()


def count_saga_stuck(saga: str) -> None:
    SAGAS_STUCK.labels(saga).inc()


class _Series:
    """The label children of one (type, kind, context), looked up once and reused."""

    __slots__ = ("duration", "failed", "in_flight", "succeeded")

    def __init__(self, type_name: str, kind: str, context: str):
        self.succeeded = HANDLED.labels(type_name, kind, context, "succeeded")
        self.failed = HANDLED.labels(type_name, kind, context, "failed")
        self.duration = DURATION.labels(type_name, kind, context)
        self.in_flight = IN_FLIGHT.labels(context)


_series: dict[tuple[str, str], _Series] = {}


class MetricsBehavior:
    """Counts and times every handler run; list it in CATGA["BEHAVIORS"]."""

    def __call__(self, message, ctx, call_next):
        key = (ctx.envelope.type, ctx.handler.context)
        series = _series.get(key)
        if series is None:
            series = _series[key] = _Series(ctx.envelope.type, ctx.envelope.kind.value, ctx.handler.context)
        series.in_flight.inc()
        start = time.perf_counter()
        try:
            result = call_next(message, ctx)
        except BaseException:
            series.failed.inc()
            raise
        else:
            series.succeeded.inc()
            return result
        finally:
            series.in_flight.dec()
            series.duration.observe(time.perf_counter() - start)


def set_backlog(snapshot) -> None:
    """Copy a reading of the message system (core.ports.Backlog) into the gauges."""
    for stream in snapshot.streams:
        STREAM_MESSAGES.labels(stream.name).set(stream.messages)
        STREAM_BYTES.labels(stream.name).set(stream.bytes)
        if stream.dead_letters:
            DEAD_LETTERS.set(stream.messages)
    for consumer in snapshot.consumers:
        CONSUMER_PENDING.labels(consumer.stream, consumer.name).set(consumer.pending)
        CONSUMER_ACK_PENDING.labels(consumer.stream, consumer.name).set(consumer.ack_pending)
        CONSUMER_REDELIVERED.labels(consumer.stream, consumer.name).set(consumer.redelivered)


def set_outbox_backlog(rows: int) -> None:
    OUTBOX_BACKLOG.set(rows)
