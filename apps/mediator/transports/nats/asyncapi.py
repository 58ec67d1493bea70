"""The whole bus as an AsyncAPI 3.0 document: subjects, who sends and receives what, headers, QoS.

Built from the handler registry, like the NATS permissions (permissions.py), so the two
say the same thing:

- channels, per command and event type: its JetStream subject `<prefix>.<context>.<cmd|evt>.<Name>`,
  its at-most-once twin `<prefix>.amo.…` (core NATS, nothing stored) and its dead letters
  `<prefix>.dlq.…`;
- operations, per context: `receive` what its durables take (its own commands, the events
  it handles), `send` what its NATS user may publish (its events, its commands and the
  commands listed in SENDS), and `send` dead letters of what it receives;
- messages: the JSON Schema of the body (core/schema.py) and of the `Catga-*` headers.

`manage.py catga_schema --format asyncapi` prints it.
"""

from urllib.parse import urlsplit

from apps.mediator.core import roles, schema
from apps.mediator.core.conf import catga_settings
from apps.mediator.core.envelope import H_CORRELATION
from apps.mediator.core.messages import Kind, Message, QoS, subject_for
from apps.mediator.core.registry import Registry
from apps.mediator.transports.nats import topology
from apps.mediator.transports.nats.subscription import H_DEAD_AT, H_DEAD_CONSUMER, H_DEAD_REASON, H_DEAD_SUBJECT

ASYNCAPI_VERSION = "3.0.0"
NATS_BINDING = "0.1.0"


def _channel_ids(msg_type: type[Message]) -> dict[str, str]:
    wire_name = msg_type.options.wire_name
    return {"stream": wire_name, "amo": f"{wire_name}.amo", "dlq": f"{wire_name}.dlq"}


def _addresses(msg_type: type[Message]) -> dict[str, str]:
    subject = subject_for(msg_type, topology.prefix())
    return {
        "stream": subject,
        "amo": topology.at_most_once_subject(subject.removeprefix(topology.prefix() + ".")),
        "dlq": topology.dlq_subject(subject),
    }


def _dead_headers(headers: dict) -> dict:
    extra = {
        H_DEAD_REASON: {"type": "string", "description": "Why it is dead (an exception, a schema violation, ...)."},
        H_DEAD_SUBJECT: {"type": "string", "description": "The subject it was delivered on."},
        H_DEAD_CONSUMER: {"type": "string", "description": "The durable consumer that gave up on it."},
        H_DEAD_AT: {"type": "string", "pattern": schema.SECONDS, "description": "Seconds since the epoch."},
    }
    return {
        **headers,
        "required": [*headers["required"], H_DEAD_REASON, H_DEAD_SUBJECT],
        "properties": {**headers["properties"], **extra},
    }


def _server() -> dict:
    first = catga_settings.NATS_URL.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    host = parts.hostname or "localhost"  # never the URL's user and password
    return {
        "host": f"{host}:{parts.port or 4222}",
        "protocol": "nats",
        "description": "NATS with JetStream. Streams "
        + ", ".join(topology.stream_name(k) for k in ("CMD", "EVT", "DLQ"))
        + ". One NATS user per role (`manage.py nats_permissions`).",
        "security": [{"$ref": "#/components/securitySchemes/natsUser"}],
    }


def _message(msg_type: type[Message], payload: dict, *, dead: bool = False) -> dict:
    opts = msg_type.options
    headers = schema.header_schema(msg_type)
    doc = (msg_type.__doc__ or "").strip()
    message = {
        "name": opts.name,
        "title": opts.wire_name + (" (dead letter)" if dead else ""),
        "contentType": "application/json",
        "headers": _dead_headers(headers) if dead else headers,
        "payload": payload,
        "correlationId": {"location": f"$message.header#/{H_CORRELATION}"},
        **{f"x-catga-{key.replace('_', '-')}": value for key, value in schema.options(msg_type).items()},
    }
    if doc:
        message["summary"] = doc.splitlines()[0]
    return message


def document(registry: Registry, *, title: str = "Catga message bus", version: str = "1.0.0") -> dict:
    types = schema.message_types(registry, kinds=(Kind.COMMAND, Kind.EVENT))
    refs, defs = schema.components(types, "#/components/schemas/{name}")
    channels: dict[str, dict] = {}
    messages: dict[str, dict] = {}
    for msg_type in types:
        wire_name, name = msg_type.options.wire_name, msg_type.options.name
        messages[wire_name] = _message(msg_type, refs[wire_name])
        messages[f"{wire_name}.dead"] = _message(msg_type, refs[wire_name], dead=True)
        ids, addresses = _channel_ids(msg_type), _addresses(msg_type)
        qos = schema.qos_of(msg_type).value
        descriptions = {
            "stream": f"JetStream (stream {topology.stream_name(_stream_kind(msg_type))}):"
            f" at_least_once and exactly_once. The mediator sends {wire_name} as {qos}.",
            "amo": "Core NATS, at_most_once: nothing stored, no retry; a receiver that is down misses it.",
            "dlq": f"Dead letters (stream {topology.stream_name('DLQ')}): the original headers and body, "
            "with the reason. Replayed with `manage.py replay`.",
        }
        for key, channel_id in ids.items():
            ref = f"#/components/messages/{wire_name}" + (".dead" if key == "dlq" else "")
            channels[channel_id] = {
                "address": addresses[key],
                "title": f"{wire_name} ({key})",
                "description": descriptions[key],
                "messages": {name: {"$ref": ref}},
            }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": "Commands, events and dead letters of the Catga contexts over NATS, generated from "
            "the handler registry by `manage.py catga_schema`. Bodies are JSON as msgspec encodes them "
            "(decimals as strings); every header value is a string. See docs/wire-format.md.",
        },
        "servers": {"nats": _server()},
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": _operations(registry, types),
        "components": {
            "schemas": defs,
            "messages": messages,
            "securitySchemes": {
                "natsUser": {
                    "type": "userPassword",
                    "description": "One NATS user per role (a context, web, admin) whose publish and subscribe "
                    "permissions `manage.py nats_permissions` generates from the registry.",
                }
            },
        },
    }


def _operation(action: str, context: str, msg_type: type[Message], channel: str, **extra) -> dict:
    name = msg_type.options.name
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{name}"}],
        "title": f"{context} {action}s {channel}",
        "x-catga-context": context,
        **extra,
    }


def _stream_kind(msg_type: type[Message]) -> str:
    return "CMD" if msg_type.kind is Kind.COMMAND else "EVT"


def _operations(registry: Registry, types: list[type[Message]]) -> dict:
    known = set(types)
    operations = {}
    for context in registry.contexts:
        durables = {d.stream: d for d in topology.durables(registry, [context])}
        for msg_type in registry.subscriptions(context):
            if msg_type not in known:
                continue
            ids = _channel_ids(msg_type)
            durable = durables[topology.stream_name(_stream_kind(msg_type))]
            operations[f"{context}.receive.{ids['stream']}"] = _operation(
                "receive",
                context,
                msg_type,
                ids["stream"],
                description=f"Pulled by the durable consumer {durable.name} of stream {durable.stream}: explicit "
                "ack after the handler's transaction commits, NAK with delay to retry, in-progress while it runs.",
                **{"x-catga-durable": durable.name, "x-catga-stream": durable.stream},
            )
            operations[f"{context}.receive.{ids['amo']}"] = _operation(
                "receive",
                context,
                msg_type,
                ids["amo"],
                description=f"Core NATS subscription in queue group {durable.name}: one replica gets each message.",
                bindings={"nats": {"queue": durable.name, "bindingVersion": NATS_BINDING}},
            )
            operations[f"{context}.send.{ids['dlq']}"] = _operation(
                "send",
                context,
                msg_type,
                ids["dlq"],
                description="Exhausted retries, permanent errors, undecodable bodies and bad headers; "
                "the original is then terminated.",
            )
        for msg_type in roles.publishable(registry, context) or []:
            if msg_type not in known:
                continue
            ids = _channel_ids(msg_type)
            channel = ids["amo"] if schema.qos_of(msg_type) is QoS.AT_MOST_ONCE else ids["stream"]
            operations[f"{context}.send.{channel}"] = _operation("send", context, msg_type, channel)
    return operations
