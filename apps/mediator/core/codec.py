"""JSON bodies for messages, strict on the way in."""

import re

import msgspec

from apps.mediator.core.conf import catga_settings
from apps.mediator.core.errors import UndecodableMessage, ValidationFailed
from apps.mediator.core.messages import Message, message_type

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoders: dict[type, msgspec.json.Decoder] = {}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(wire_name: str, body: bytes) -> Message:
    """Bytes to a validated message; UndecodableMessage says exactly why not."""
    check_storable(body, catga_settings.MAX_BODY_DEPTH)
    cls = message_type(wire_name)
    if cls is None:
        raise UndecodableMessage(f"unknown message type {wire_name!r}")
    decoder = _decoders.get(cls)
    if decoder is None:
        decoder = _decoders[cls] = msgspec.json.Decoder(cls)
    try:
        message = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise UndecodableMessage(f"schema violation in {wire_name}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise UndecodableMessage(f"undecodable body for {wire_name}: {exc}") from exc
    except RecursionError:
        raise UndecodableMessage(f"undecodable body for {wire_name}: nested deeper than Python can decode") from None
    message.validate()
    return message


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(rb"[\[\]{}]")


def check_storable(body: bytes, max_depth: int) -> None:
    """Refuse, before any write, what PostgreSQL cannot store or would choke on.

    jsonb and text cannot hold NUL (JSON may escape it as \\u0000), and a body nested
    thousands deep costs every parser on the way (msgspec, jsonb, the admin) its stack.
    Both scans run in C; the exact depth is only worked out for bodies with many brackets.
    """
    if body.count(b"[") + body.count(b"{") > max_depth and _depth(body) > max_depth:
        raise UndecodableMessage(f"body nested deeper than {max_depth} levels (MAX_BODY_DEPTH)")
    if b"\\u0000" in body:
        try:
            value = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return  # not JSON: decoding says why
        if _has_nul(value):
            raise UndecodableMessage("body holds a NUL character (\\u0000), which PostgreSQL cannot store")


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _depth(body: bytes) -> int:
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def validated(message: Message) -> Message:
    """Check a locally built message as strictly as a received one.

    msgspec checks types and constraints when decoding, not in __init__, so a
    round trip is how a sender learns about a bad message before it is stored.
    """
    try:
        msgspec.convert(msgspec.to_builtins(message), type(message), strict=False)
    except msgspec.ValidationError as exc:
        raise ValidationFailed(f"{message.options.wire_name}: {exc}") from exc
    message.validate()
    return message


def to_payload(message: Message) -> dict:
    return msgspec.to_builtins(message)
