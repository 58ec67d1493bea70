"""JSON bodies for messages, strict on the way in."""

import msgspec

from apps.mediator.core.errors import UndecodableMessage, ValidationFailed
from apps.mediator.core.messages import Message, message_type

_encoder = msgspec.json.Encoder(decimal_format="string")
_decoders: dict[type, msgspec.json.Decoder] = {}


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(wire_name: str, body: bytes) -> Message:
    """Bytes to a validated message; UndecodableMessage says exactly why not."""
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
    message.validate()
    return message


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
