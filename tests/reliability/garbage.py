"""Hostile messages for the consumers: what each one is and how it must end.

Every message published straight to a command or event subject is one `Garbage`:
the subject, headers and body that go on the wire, and what the consumer must do
with it: dead-letter it, with a reason containing `reason`, and apply nothing (a
forged copy of a handled message included). Each one carries a tag (the `Garbage-Id`
header, or the start of its body when it has no headers) so its dead letter can be
found again.
"""

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from apps.mediator.core.ids import new_id

TAG = "Garbage-Id"
HUGE = 300 * 1024  # over CATGA["MAX_BODY_BYTES"] (256 KiB), under the servers' max_payload (320 KiB)


@dataclass(frozen=True)
class Garbage:
    kind: str
    subject: str
    headers: dict | None
    body: bytes
    reason: str  # a substring of the dead letter's Catga-Dead-Reason
    tag: str = field(default="")


@dataclass(frozen=True)
class Handled:
    """A message the consumers already handled, whose id a forger reuses."""

    id: str
    type: str
    subject: str


def _headers(tag: str, wire_type: str, kind: str = "command", **extra) -> dict:
    message_id = new_id()
    return {
        "Catga-Message-Id": message_id,
        "Nats-Msg-Id": message_id,
        "Catga-Type": wire_type,
        "Catga-Kind": kind,
        TAG: tag,
        **extra,
    }


def _reserve(order_id: str, quantity: int = 1) -> bytes:
    return json.dumps({"order_id": order_id, "lines": [{"sku": "SKU-X", "quantity": quantity}]}).encode()


RESERVE = ("catga.inventory.cmd.ReserveStock", "inventory.ReserveStock")
CHARGE = ("catga.payments.cmd.ChargePayment", "payments.ChargePayment")
REPLY = ("catga.inventory.evt.StockReserved", "inventory.StockReserved")


def _random_bytes(tag, rng):
    subject, wire = rng.choice([RESERVE, CHARGE])
    body = b"\xff" + rng.randbytes(rng.randint(16, 4096))  # never valid UTF-8, so never JSON
    return Garbage("random bytes", subject, _headers(tag, wire), body, "undecodable body")


def _random_bytes_event(tag, rng):
    subject, wire = REPLY
    body = b"\xfe" + rng.randbytes(rng.randint(16, 512))
    return Garbage("random bytes (event)", subject, _headers(tag, wire, "event"), body, "undecodable body")


def _huge(tag, rng):
    subject, wire = RESERVE
    body = b'{"order_id": "' + b"x" * HUGE + b'", "lines": []}'
    return Garbage("huge body", subject, _headers(tag, wire), body, "exceeds MAX_BODY_BYTES")


def _wrong_types(tag, rng):
    subject, wire, body = rng.choice(
        [
            (*RESERVE, {"order_id": 123, "lines": "lots"}),
            (*RESERVE, {"order_id": "o", "lines": [{"sku": "SKU-X", "quantity": -5}]}),
            (*RESERVE, {"order_id": "o", "lines": [], "admin": True}),
            (*RESERVE, None),
            (*RESERVE, [1, 2, 3]),
            (*CHARGE, {"order_id": "o", "amount": "a lot", "token": "tok_visa"}),
            (*CHARGE, {"order_id": "o", "amount": {"$gt": 0}, "token": ["tok_visa"]}),
            (*REPLY, {"order_id": None}),
        ]
    )
    kind = "event" if ".evt." in subject else "command"
    return Garbage("wrong types", subject, _headers(tag, wire, kind), json.dumps(body).encode(), "schema violation")


def _missing_headers(tag, rng):
    subject, wire = RESERVE
    headers = rng.choice(
        [
            {TAG: tag, "Nats-Msg-Id": new_id()},  # no type, no kind
            {TAG: tag, "Catga-Type": wire, "Catga-Kind": "command"},  # no id at all
            {TAG: tag, "Nats-Msg-Id": new_id(), "Catga-Type": wire},  # no kind
        ]
    )
    return Garbage("missing headers", subject, headers, _reserve("nobody"), "missing header")


def _no_headers(tag, rng):
    subject, _ = rng.choice([RESERVE, CHARGE, REPLY])
    return Garbage("no headers", subject, None, f"{tag} ".encode() + _reserve("nobody"), "missing header", tag)


def _bad_header_values(tag, rng):
    subject, wire = RESERVE
    bad = rng.choice(
        [
            {"Catga-Kind": "banana"},
            {"Catga-QoS": "twice"},
            {"Catga-Attempt": "many"},
            {"Catga-Created-At": "yesterday"},
            {"Catga-Created-At": "nan"},
            {"Catga-Created-At": "1e300"},
            {"Catga-Not-Before": "-inf"},
            {"Catga-Message-Id": "F" * 300},
            {"Catga-Correlation-Id": "C" * 100},
            {"Catga-Causation-Id": "\x00" * 40},
            {"Catga-Type": "inventory." + "Z" * 400},
        ]
    )
    return Garbage("bad header values", subject, _headers(tag, wire, **bad), _reserve("nobody"), "bad header value")


def _unknown_type(tag, rng):
    wire = rng.choice(["inventory.Teleport", "nothing-at-all", "x" * 120 + ".Y"])
    subject = "catga.inventory.cmd.Teleport"
    return Garbage("unknown type", subject, _headers(tag, wire), b"{}", "unknown message type")


def _wrong_context(tag, rng):
    # A valid ChargePayment, on inventory's subject: inventory has no handler for it.
    body = json.dumps({"order_id": "forged-charge", "amount": "1.00", "token": "tok_visa"}).encode()
    return Garbage("wrong context", RESERVE[0], _headers(tag, CHARGE[1]), body, "no handler for payments.ChargePayment")


def _deep(tag, rng):
    # Valid headers, a body nested thousands of levels deep (in a field, then at the top).
    depth = rng.randint(2000, 6000)
    nested = rng.choice([b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth + b"]" * depth])
    body = rng.choice([b'{"order_id": ' + nested + b', "lines": []}', nested])
    return Garbage("deeply nested body", RESERVE[0], _headers(tag, RESERVE[1]), body, "nested deeper than")


def _nul_in_body(tag, rng):
    # JSON may escape NUL; PostgreSQL's jsonb and text cannot hold it.
    body = json.dumps({"order_id": "o\x00" + tag, "lines": [{"sku": "SKU-X", "quantity": 1}]}).encode()
    return Garbage("NUL in body", RESERVE[0], _headers(tag, RESERVE[1]), body, "NUL character")


def _bad_workflow(tag, rng):
    value = rng.choice(["not-a-workflow", "x:y", ":", "01ARZ3NDEKTSV4RRFFQ69G5FAV:-1", "W" * 300 + ":1"])
    headers = _headers(tag, RESERVE[1], **{"Catga-Workflow": value})
    return Garbage("bad workflow header", RESERVE[0], headers, _reserve("nobody"), "Catga-Workflow")


def _huge_header(tag, rng):
    name = rng.choice(["traceparent", "tracestate", "Catga-Correlation-Id", "X-Anything"])
    headers = _headers(tag, RESERVE[1], **{name: "0" * rng.randint(8_000, 20_000)})
    return Garbage("huge header", RESERVE[0], headers, _reserve("nobody"), "bad header value")


KINDS = [
    _random_bytes,
    _random_bytes_event,
    _huge,
    _wrong_types,
    _missing_headers,
    _no_headers,
    _bad_header_values,
    _unknown_type,
    _wrong_context,
    _deep,
    _nul_in_body,
    _bad_workflow,
    _huge_header,
]


def forged(tag: str, rng: random.Random, handled: list[Handled]) -> Garbage:
    """A message reusing the id of one already handled: another body, or another type, or garbage."""
    target = rng.choice(handled)
    variant = rng.randrange(3)
    dedupe = new_id()  # past JetStream's duplicate window: only the inbox can stop it
    if variant == 0:  # the same id and type, another body
        headers = {**_headers(tag, target.type), "Catga-Message-Id": target.id, "Nats-Msg-Id": dedupe}
        if target.type == RESERVE[1]:
            body = _reserve(f"forged-{tag}", 7)
        else:
            body = json.dumps({"order_id": f"forged-{tag}", "amount": "0.01", "token": "tok_visa"}).encode()
        return Garbage("forged id, other body", target.subject, headers, body, "forged message id")
    if variant == 1:  # the id of a message of another type, as a ReserveStock
        headers = {**_headers(tag, RESERVE[1]), "Catga-Message-Id": target.id, "Nats-Msg-Id": dedupe}
        body = _reserve(f"forged-{tag}", 7)
        return Garbage("forged id, other type", RESERVE[0], headers, body, "forged message id")
    headers = {**_headers(tag, target.type), "Catga-Message-Id": target.id, "Nats-Msg-Id": dedupe}
    body = b"\xff" + rng.randbytes(64)
    return Garbage("forged id, garbage body", target.subject, headers, body, "names a message already handled")


def stream(rng: random.Random, handled: list[Handled]) -> Iterator[Garbage]:
    """Every kind in turn (so the first few cover them all), forever; forgeries in between."""
    for n in itertools.count():
        tag = f"garbage-{n:05d}"
        if n % (len(KINDS) + 1) == len(KINDS):
            item = forged(tag, rng, handled)
        else:
            item = KINDS[n % (len(KINDS) + 1)](tag, rng)
        yield item if item.tag else Garbage(**{**item.__dict__, "tag": tag})
