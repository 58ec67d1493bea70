"""The messages' wire contract as JSON Schema, for services written in other languages.

A message travels as a JSON body (msgspec's encoding of the Struct: decimals as strings,
tuples as arrays, unknown fields refused) beside string headers (core/envelope.py). This
module describes both from the registry, transport-neutrally:

    document = json_schema(registry)                  # `manage.py catga_schema --format jsonschema`
    body_schema(document, "inventory.ReserveStock")   # a standalone schema for one body

The AsyncAPI document of the NATS transport (transports/nats/asyncapi.py) reuses these
pieces, with its subjects around them.
"""

import msgspec

from apps.mediator.core import envelope
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.messages import _TYPES, Kind, Message, QoS
from apps.mediator.core.registry import Registry

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SECONDS = r"^[0-9]+(\.[0-9]+)?$"  # seconds since the epoch, as Python's repr(float) writes them
ID = {"type": "string", "minLength": 1, "maxLength": envelope.MAX_ID_LENGTH}


def message_types(registry: Registry, kinds=(Kind.COMMAND, Kind.EVENT, Kind.QUERY)) -> list[type[Message]]:
    """The registry's contexts' message types of `kinds`, by wire name."""
    return [t for name, t in sorted(_TYPES.items()) if t.options.context in registry.contexts and t.kind in kinds]


def qos_of(msg_type: type[Message]) -> QoS:
    """The QoS the mediator sends it with: Meta.qos, else CATGA["DEFAULT_QOS"]."""
    return QoS(msg_type.options.qos or catga_settings.DEFAULT_QOS)


def components(types: list[type[Message]], ref_template: str) -> tuple[dict[str, dict], dict]:
    """({wire name: {"$ref": ...}}, {component name: schema}) for the bodies of `types`."""
    refs, defs = msgspec.json.schema_components(types, ref_template=ref_template)
    return {t.options.wire_name: ref for t, ref in zip(types, refs, strict=True)}, defs


def header_schema(msg_type: type[Message]) -> dict:
    """The headers a receiver reads for `msg_type` (all values are strings)."""
    longest = catga_settings.MAX_HEADER_LENGTH
    qos = qos_of(msg_type)
    props = {
        envelope.H_ID: {
            **ID,
            "description": "Unique message id (the mediator writes a 26-character ULID, sortable by time). "
            f"Falls back to {envelope.H_DEDUPE} when absent.",
        },
        envelope.H_DEDUPE: {
            **ID,
            "description": "JetStream de-duplication key: the message id. Re-publishing with the same value "
            "within the stream's duplicate window stores it once (needed for exactly_once).",
        },
        envelope.H_TYPE: {"const": msg_type.options.wire_name, "description": "Wire name <context>.<Name>."},
        envelope.H_KIND: {"const": msg_type.kind.value},
        envelope.H_CORRELATION: {**ID, "description": "The conversation's id; defaults to the message id."},
        envelope.H_CAUSATION: {**ID, "description": "Id of the message whose handler sent this one."},
        envelope.H_QOS: {
            "enum": [q.value for q in QoS],
            "default": QoS.AT_LEAST_ONCE.value,
            "description": f"Delivery guarantee; the mediator sends this type as {qos.value}. "
            "A receiver without the header assumes at_least_once.",
        },
        envelope.H_ATTEMPT: {"type": "string", "pattern": "^[1-9][0-9]*$", "default": "1"},
        envelope.H_CREATED: {
            "type": "string",
            "pattern": SECONDS,
            "description": "Seconds since the epoch (a decimal number as a string); defaults to the arrival time.",
        },
        envelope.H_NOT_BEFORE: {
            "type": "string",
            "pattern": SECONDS,
            "description": "Scheduled delivery time (countdown / eta), seconds since the epoch.",
        },
        envelope.H_TRACEPARENT: {
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C trace context.",
        },
        envelope.H_TRACESTATE: {"type": "string", "description": "W3C trace state."},
        envelope.H_WORKFLOW: {
            "type": "string",
            "pattern": f"^{envelope.WORKFLOW.pattern}$",
            "description": "<workflow id>:<member index> of a chain or group member; written by the mediator only.",
        },
    }
    expires = getattr(envelope, "H_EXPIRES", None)  # send/publish `expires` (issue 18), where present
    if expires:
        props[expires] = {
            "type": "string",
            "pattern": SECONDS,
            "description": "Seconds since the epoch after which the message is recorded as expired, not handled.",
        }
    for prop in props.values():
        if "const" not in prop and "enum" not in prop:
            prop["maxLength"] = min(prop.get("maxLength", longest), longest)
    return {
        "type": "object",
        "required": [envelope.H_ID, envelope.H_TYPE, envelope.H_KIND],
        "properties": props,
        "additionalProperties": {"type": "string", "maxLength": longest},
    }


def options(msg_type: type[Message]) -> dict:
    opts = msg_type.options
    return {
        "kind": msg_type.kind.value,
        "context": opts.context,
        "name": opts.name,
        "version": opts.version,
        "qos": qos_of(msg_type).value,
        "max_attempts": opts.max_attempts or catga_settings.MAX_ATTEMPTS,
    }


def json_schema(registry: Registry) -> dict:
    """Every message type's body and headers, as one JSON Schema (2020-12) document."""
    types = message_types(registry)
    refs, defs = components(types, "#/$defs/{name}")
    messages = {}
    for msg_type in types:
        wire_name = msg_type.options.wire_name
        entry = {**options(msg_type), "body": refs[wire_name], "headers": header_schema(msg_type)}
        if msg_type.kind is Kind.QUERY:
            entry["note"] = "Queries run in the asker's process (mediator.ask); they never travel on the broker."
        messages[wire_name] = entry
    return {
        "$schema": DIALECT,
        "title": "Catga messages",
        "description": "Bodies are JSON objects as msgspec encodes the message (decimals as strings, "
        "tuples as arrays, unknown fields refused); headers are strings. messages.<wire name>.body "
        "is the body's schema, .headers the headers'.",
        "$defs": defs,
        "messages": messages,
    }


def body_schema(document: dict, wire_name: str) -> dict:
    """A standalone schema for one message body, cut from `json_schema()`'s document."""
    try:
        ref = document["messages"][wire_name]["body"]
    except KeyError:
        raise KeyError(f"no message type {wire_name!r} in the schema") from None
    return {"$schema": DIALECT, "$defs": document["$defs"], **ref}
