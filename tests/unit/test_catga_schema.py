"""`manage.py catga_schema`: the JSON Schema of every message and the AsyncAPI 3.0 document of the bus.

The AsyncAPI document is validated against the official AsyncAPI 3.0.0 JSON Schema, vendored
in tests/contracts/asyncapi/ (see its README.md for where it came from). That schema checks
the document's shape, not that its $refs land, so the references are followed here too.
"""

import copy
import io
import json
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
from django.core.management import CommandError, call_command

from apps.inventory.contracts import ReserveStock, StockLine
from apps.mediator.core import codec, schema
from apps.mediator.runtime import get_registry
from apps.mediator.transports.nats import asyncapi, permissions
from apps.payments.contracts import ChargePayment

ASYNCAPI_SCHEMA = Path(__file__).resolve().parents[1] / "contracts" / "asyncapi" / "3.0.0.json"


@pytest.fixture(scope="module")
def asyncapi_validator():
    official = json.loads(ASYNCAPI_SCHEMA.read_text())
    assert official["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    return jsonschema.Draft7Validator(official)


@pytest.fixture
def document():
    return asyncapi.document(get_registry())


def errors(validator, document) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in validator.iter_errors(document)]


def resolve(document: dict, ref: str):
    assert ref.startswith("#/"), ref
    node = document
    for part in ref[2:].split("/"):
        assert part in node, f"{ref}: no {part!r}"
        node = node[part]
    return node


def local_refs(node):
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from local_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from local_refs(value)


def test_the_asyncapi_document_is_valid_asyncapi_3(asyncapi_validator, document):
    assert errors(asyncapi_validator, document) == []
    for ref in local_refs(document):
        resolve(document, ref)
    # AsyncAPI 3: an operation's messages are messages of its own channel.
    for name, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), name


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d.pop("info"),
        lambda d: d.update(asyncapi="2.6.0"),
        lambda d: d["operations"]["inventory.receive.inventory.ReserveStock"].update(action="subscribe"),
        lambda d: d["operations"]["inventory.receive.inventory.ReserveStock.amo"]["bindings"]["nats"].update(queue=7),
        lambda d: d["channels"]["inventory.ReserveStock"].update(address=["not", "a", "string"]),
        lambda d: d["components"]["messages"]["inventory.ReserveStock"].update(headers={"type": 3}),
        lambda d: d["components"]["schemas"]["ReserveStock"].update(type="objekt"),
        lambda d: d["servers"]["nats"].pop("protocol"),
    ],
    ids=["no info", "version", "action", "binding", "address", "headers", "payload schema", "server"],
)
def test_a_broken_document_fails_the_official_schema(asyncapi_validator, document, breakage):
    broken = copy.deepcopy(document)
    breakage(broken)
    assert errors(asyncapi_validator, broken)


def test_channels_are_the_nats_subjects(document):
    addresses = {c["address"] for c in document["channels"].values()}
    for subject in (
        "catga.inventory.cmd.ReserveStock",
        "catga.amo.inventory.cmd.ReserveStock",
        "catga.dlq.inventory.cmd.ReserveStock",
        "catga.payments.evt.PaymentCaptured",
        "catga.amo.payments.evt.PaymentCaptured",
        "catga.dlq.payments.evt.PaymentCaptured",
    ):
        assert subject in addresses
    assert not any(".qry." in a for a in addresses)  # queries run in-process, never on the broker


def test_operations_say_who_receives_and_sends_what(document):
    operations = document["operations"]
    receive = {(o["x-catga-context"], o["channel"]["$ref"]) for o in operations.values() if o["action"] == "receive"}
    send = {(o["x-catga-context"], o["channel"]["$ref"]) for o in operations.values() if o["action"] == "send"}
    assert ("inventory", "#/channels/inventory.ReserveStock") in receive
    assert ("payments", "#/channels/payments.ChargePayment") in receive
    assert ("inventory", "#/channels/orders.OrderConfirmed") in receive  # inventory commits on it
    assert ("orders", "#/channels/payments.PaymentCaptured") in receive  # the saga's reply
    assert ("payments", "#/channels/inventory.ReserveStock") not in receive
    assert ("orders", "#/channels/payments.ChargePayment") in send  # orders' SENDS
    assert ("payments", "#/channels/payments.PaymentCaptured") in send
    assert ("payments", "#/channels/inventory.ReserveStock") not in send
    assert ("inventory", "#/channels/inventory.ReserveStock.dlq") in send
    durable = operations["inventory.receive.inventory.ReserveStock"]
    assert durable["x-catga-durable"] == "inventory_cmd" and durable["x-catga-stream"] == "CATGA_CMD"


def test_what_the_document_lets_a_context_send_its_nats_user_may_publish(document):
    registry = get_registry()
    for name, operation in document["operations"].items():
        address = resolve(document, operation["channel"]["$ref"])["address"]
        if operation["action"] == "send":
            assert permissions.may_publish(registry, operation["x-catga-context"], address), name
    # and nothing a context's user may not publish is offered as its send
    assert not permissions.may_publish(registry, "payments", "catga.inventory.cmd.ReserveStock")


def test_message_headers_and_qos(document):
    message = document["components"]["messages"]["payments.ChargePayment"]
    headers = message["headers"]
    assert headers["required"] == ["Catga-Message-Id", "Catga-Type", "Catga-Kind"]
    assert headers["properties"]["Catga-Type"]["const"] == "payments.ChargePayment"
    assert headers["properties"]["Catga-Kind"]["const"] == "command"
    for name in ("Nats-Msg-Id", "Catga-Correlation-Id", "Catga-Causation-Id", "Catga-QoS", "traceparent"):
        assert name in headers["properties"]
    assert message["x-catga-qos"] == "at_least_once" and message["x-catga-max-attempts"] == 5
    dead = document["components"]["messages"]["payments.ChargePayment.dead"]["headers"]
    assert "Catga-Dead-Reason" in dead["required"]


def test_the_server_never_shows_credentials(settings):
    settings.CATGA = {**settings.CATGA, "NATS_URL": "nats://web:s3cret-pw@nats-0.nats:4223,nats://nats-1:4222"}
    text = json.dumps(asyncapi.document(get_registry()))
    assert "s3cret-pw" not in text
    assert asyncapi.document(get_registry())["servers"]["nats"]["host"] == "nats-0.nats:4223"


def test_a_body_as_the_mediator_encodes_it_validates_against_the_json_schema():
    document = schema.json_schema(get_registry())
    jsonschema.Draft202012Validator.check_schema(document)
    charge = jsonschema.Draft202012Validator(schema.body_schema(document, "payments.ChargePayment"))
    body = json.loads(codec.encode(ChargePayment(order_id="o-1", amount=Decimal("12.50"), token="tok_visa")))
    assert body["amount"] == "12.50"  # decimals travel as strings
    assert list(charge.iter_errors(body)) == []
    assert list(charge.iter_errors({**body, "amount": 12.5}))  # a JSON number is not the contract
    assert list(charge.iter_errors({**body, "tip": "1.00"}))  # unknown fields are refused, as msgspec does
    assert list(charge.iter_errors({"order_id": "o-1", "amount": "1.00"}))  # token is required

    reserve = jsonschema.Draft202012Validator(schema.body_schema(document, "inventory.ReserveStock"))
    body = json.loads(codec.encode(ReserveStock(order_id="o-1", lines=(StockLine(sku="A", quantity=2),))))
    assert list(reserve.iter_errors(body)) == []
    assert list(reserve.iter_errors({"order_id": "o-1", "lines": [{"sku": "A", "quantity": 0}]}))  # gt=0

    assert document["messages"]["orders.GetOrder"]["kind"] == "query"
    with pytest.raises(KeyError, match="no message type"):
        schema.body_schema(document, "inventory.Teleport")


def test_the_command_writes_either_format_and_names_a_bad_option(tmp_path):
    out = io.StringIO()
    call_command("catga_schema", stdout=out)
    assert json.loads(out.getvalue())["asyncapi"] == "3.0.0"

    target = tmp_path / "messages.json"
    call_command("catga_schema", format="jsonschema", output=str(target), stderr=io.StringIO())
    assert "payments.ChargePayment" in json.loads(target.read_text())["messages"]

    with pytest.raises(CommandError, match="--format 'yaml'"):
        call_command("catga_schema", format="yaml")
    with pytest.raises(CommandError, match="--output"):
        call_command("catga_schema", output=str(tmp_path / "missing" / "x.json"))
