"""The envelope: everything about a message except its body.

On NATS it travels as headers beside a JSON body; in the database it is the
columns of the history's Message row.
"""

import datetime as dt
import re
import time

import msgspec

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.errors import UndecodableMessage
from apps.mediator.core.ids import new_id
from apps.mediator.core.messages import Kind, Message, QoS

H_ID = "Catga-Message-Id"
H_DEDUPE = "Nats-Msg-Id"  # JetStream's de-duplication key: the message id, or a replay's own key
H_TYPE = "Catga-Type"
H_KIND = "Catga-Kind"
H_CORRELATION = "Catga-Correlation-Id"
H_CAUSATION = "Catga-Causation-Id"
H_QOS = "Catga-QoS"
H_ATTEMPT = "Catga-Attempt"
H_CREATED = "Catga-Created-At"
H_NOT_BEFORE = "Catga-Not-Before"
H_EXPIRES = "Catga-Expires"  # seconds since the epoch after which the message is not handled
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_WORKFLOW = "Catga-Workflow"

# What the history's columns hold (apps.mediator.models.Message): ids are 26-character
# ULIDs, wire names "<context>.<Name>". Longer values from the wire are refused here,
# as undecodable, rather than failing the database write on every redelivery.
MAX_ID_LENGTH = 26
MAX_TYPE_LENGTH = 200
WORKFLOW = re.compile(r"[0-9A-Z]{1,26}:[0-9]{1,6}")  # "<workflow id>:<member index>", as orchestration writes it


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    type: str
    kind: Kind
    correlation_id: str
    causation_id: str | None = None
    qos: QoS = QoS.AT_LEAST_ONCE
    attempt: int = 1
    created_at: float  # seconds since the epoch
    not_before: float | None = None  # scheduled delivery (countdown / eta)
    expires: float | None = None  # not handled after this (send/publish `expires`)
    traceparent: str | None = None
    tracestate: str | None = None
    workflow: str | None = None  # "<workflow id>:<member index>" for chain and group members

    @classmethod
    def for_message(
        cls,
        message: Message,
        *,
        qos: QoS,
        cause: "Envelope | None" = None,
        not_before: float | None = None,
        expires: float | None = None,
        traceparent: str | None = None,
        correlation_id: str | None = None,
        workflow: str | None = None,
        message_id: str | None = None,
    ) -> "Envelope":
        message_id = message_id or new_id()
        return cls(
            id=message_id,
            type=message.options.wire_name,
            kind=message.kind,
            correlation_id=correlation_id or (cause.correlation_id if cause else message_id),
            workflow=workflow,
            causation_id=cause.id if cause else None,
            qos=qos,
            created_at=time.time(),
            not_before=not_before,
            expires=expires,
            traceparent=traceparent,
        )

    def expired(self, now: float | None = None) -> bool:
        """Past its `expires`: recorded as expired and not handled."""
        return self.expires is not None and self.expires <= (time.time() if now is None else now)

    def with_attempt(self, attempt: int) -> "Envelope":
        return msgspec.structs.replace(self, attempt=attempt)

    def to_headers(self) -> dict[str, str]:
        headers = {
            H_ID: self.id,
            H_DEDUPE: self.id,
            H_TYPE: self.type,
            H_KIND: self.kind.value,
            H_CORRELATION: self.correlation_id,
            H_QOS: self.qos.value,
            H_ATTEMPT: str(self.attempt),
            H_CREATED: repr(self.created_at),
        }
        if self.causation_id:
            headers[H_CAUSATION] = self.causation_id
        if self.not_before is not None:
            headers[H_NOT_BEFORE] = repr(self.not_before)
        if self.expires is not None:
            headers[H_EXPIRES] = repr(self.expires)
        if self.traceparent:
            headers[H_TRACEPARENT] = self.traceparent
        if self.tracestate:
            headers[H_TRACESTATE] = self.tracestate
        if self.workflow:
            headers[H_WORKFLOW] = self.workflow
        return headers

    @classmethod
    def from_headers(cls, headers: dict[str, str] | None) -> "Envelope":
        headers = headers or {}
        headers = dict(headers)
        headers.setdefault(H_ID, headers.get(H_DEDUPE, ""))
        missing = [h for h in (H_ID, H_TYPE, H_KIND) if not headers.get(h)]
        if missing:
            raise UndecodableMessage(f"missing header(s): {', '.join(missing)}")
        longest = catga_settings.MAX_HEADER_LENGTH
        for name, value in headers.items():
            if "\x00" in str(value):
                raise UndecodableMessage("bad header value: a NUL character (the history cannot store it)")
            if len(str(value)) > longest:
                raise UndecodableMessage(
                    f"bad header value: {str(name)[:64]} is {len(str(value))} characters long"
                    f" (MAX_HEADER_LENGTH={longest})"
                )
        workflow = headers.get(H_WORKFLOW)
        if workflow is not None and not WORKFLOW.fullmatch(workflow):
            raise UndecodableMessage(f"bad header value: {H_WORKFLOW}={workflow[:64]!r} is not <workflow id>:<index>")
        try:
            envelope = cls(
                id=headers[H_ID],
                type=headers[H_TYPE],
                kind=Kind(headers[H_KIND]),
                correlation_id=headers.get(H_CORRELATION) or headers[H_ID],
                causation_id=headers.get(H_CAUSATION) or None,
                qos=QoS(headers.get(H_QOS, QoS.AT_LEAST_ONCE.value)),
                attempt=int(headers.get(H_ATTEMPT, "1")),
                created_at=float(headers.get(H_CREATED, time.time())),
                not_before=float(headers[H_NOT_BEFORE]) if headers.get(H_NOT_BEFORE) else None,
                expires=float(headers[H_EXPIRES]) if headers.get(H_EXPIRES) else None,
                traceparent=headers.get(H_TRACEPARENT),
                tracestate=headers.get(H_TRACESTATE),
                workflow=workflow,
            )
        except ValueError as exc:
            raise UndecodableMessage(f"bad header value: {exc}") from exc
        envelope._check_storable()
        return envelope

    def _check_storable(self) -> None:
        """Refuse what parses but cannot be recorded: over-long ids, times no datetime can hold."""
        ids = {H_ID: self.id, H_CORRELATION: self.correlation_id, H_CAUSATION: self.causation_id or ""}
        for header, value in ids.items():
            if len(value) > MAX_ID_LENGTH:
                raise UndecodableMessage(f"bad header value: {header} is longer than {MAX_ID_LENGTH} characters")
        if len(self.type) > MAX_TYPE_LENGTH:
            raise UndecodableMessage(f"bad header value: {H_TYPE} is longer than {MAX_TYPE_LENGTH} characters")
        times = ((H_CREATED, self.created_at), (H_NOT_BEFORE, self.not_before), (H_EXPIRES, self.expires))
        for header, seconds in times:
            try:
                if seconds is not None:
                    dt.datetime.fromtimestamp(seconds, tz=dt.UTC)
            except (ValueError, OverflowError, OSError):
                raise UndecodableMessage(f"bad header value: {header}={seconds!r} is not a time") from None
