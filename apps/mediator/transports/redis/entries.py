"""A message as a Redis stream entry (and as an at-most-once pub/sub payload): the fields
scripts.py describes, built from an `Outgoing` and read back into headers and body."""

from apps.mediator.core.envelope import H_DEDUPE, H_ID
from apps.mediator.core.messages import SUBJECT_SEGMENT, Kind
from apps.mediator.core.ports import Outgoing
from apps.mediator.transports.redis import scripts, topology

HEADER = b"h."


def context_of(wire_name: str) -> str:
    return wire_name.partition(".")[0]


def subject_of(item: Outgoing) -> str:
    """The NATS subject the message would have: `catga.<context>.<cmd|evt|qry>.<Name>`."""
    context, _, name = item.envelope.type.partition(".")
    return f"{topology.prefix()}.{context}.{SUBJECT_SEGMENT[item.envelope.kind]}.{name}"


def stream_of(item: Outgoing) -> str:
    """Commands go to the handling context's stream, events to the publishing context's."""
    kind = "evt" if item.envelope.kind is Kind.EVENT else "cmd"
    return topology.stream_key(context_of(item.envelope.type), kind)


def dedupe_of(item: Outgoing) -> str:
    return topology.dedupe_key(context_of(item.envelope.type), item.dedupe_id or item.envelope.id)


def fields_of(item: Outgoing) -> list[bytes]:
    """Field, value, field, value...: what XADD and the scripts take."""
    fields = [b"s", subject_of(item).encode(), b"b", item.body]
    for name, value in item.headers().items():
        fields += [HEADER + name.encode(), value.encode()]
    return fields


def flat(fields: dict[bytes, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for key, value in fields.items():
        out += [key, value]
    return out


def parse(fields: dict[bytes, bytes]) -> tuple[dict[str, str], bytes, str]:
    """Headers, body and subject of an entry. Hostile bytes decode with replacement: the worker
    then refuses the headers (a dead letter with the reason), never this transport."""
    headers = {
        key[len(HEADER) :].decode(errors="replace"): value.decode(errors="replace")
        for key, value in fields.items()
        if key.startswith(HEADER)
    }
    return headers, fields.get(b"b", b""), fields.get(b"s", b"").decode(errors="replace")


def message_id(headers: dict[str, str]) -> str:
    return headers.get(H_ID) or headers.get(H_DEDUPE) or ""


def payload(item: Outgoing) -> bytes:
    """An at-most-once message on pub/sub: the same fields, as netstrings in one payload."""
    return scripts.netstrings(fields_of(item))


def unpayload(data: bytes) -> dict[bytes, bytes]:
    values = scripts.unnetstrings(data)
    return dict(zip(values[::2], values[1::2], strict=False))
