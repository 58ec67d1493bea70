"""Log records that carry the ids a support person searches by, as JSON lines or plain text.

`ContextFilter` (on the handler) adds to every record the message id and correlation
id of the message being handled in this thread, and the trace and span ids of the
current span (or, with tracing off, the trace id the message arrived with).
`JsonFormatter` writes one JSON object a line:

    {"time": "...", "level": "INFO", "logger": "catga.worker", "message": "...",
     "message_id": "...", "correlation_id": "...", "trace_id": "...", ...extra}

This module is loaded by LOGGING before the apps are ready: it imports no model.
"""

import datetime as dt
import json
import logging

from opentelemetry import trace

from apps.mediator.core.context import current_envelope

IDS = ("message_id", "correlation_id", "trace_id", "span_id")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        envelope = current_envelope.get()
        if envelope is not None:
            if getattr(record, "message_id", None) is None:
                record.message_id = envelope.id
            if getattr(record, "correlation_id", None) is None:
                record.correlation_id = envelope.correlation_id
        if getattr(record, "trace_id", None) is None:
            span = trace.get_current_span().get_span_context()
            if span.is_valid:
                record.trace_id = format(span.trace_id, "032x")
                record.span_id = format(span.span_id, "016x")
            elif envelope is not None and envelope.traceparent:
                parts = envelope.traceparent.split("-")
                if len(parts) == 4:
                    record.trace_id = parts[1]
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            out[key] = getattr(record, key, None)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """The human-readable default (`make run`): the ids, when there are any, at the end of the line."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # the line before any traceback
        line = super().formatMessage(record)
        correlation = getattr(record, "correlation_id", None)
        if correlation:
            line += f" [correlation_id={correlation} message_id={getattr(record, 'message_id', '')}]"
        return line
