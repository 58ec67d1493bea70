"""A service in another language can send a command and read the event it causes.

Nothing of apps.mediator builds what is sent: the client below speaks the NATS protocol
over a plain socket (CONNECT, SUB, HPUB, MSG/HMSG, PING/PONG), the headers and the JSON
body are written by hand as docs/wire-format.md describes them, and the body is checked
against the JSON Schema that `manage.py catga_schema --format jsonschema` exports before
it is sent. What a Go or .NET service does with its own NATS client is the same.
"""

import base64
import io
import json
import os
import secrets
import socket
import time

import jsonschema
import pytest
from django.core.management import call_command

from apps.inventory.models import Reservation
from apps.mediator.models import Delivery, Message
from apps.mediator.servers.ports import wait_until
from tests.integration.helpers import dead_letters

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def ulid() -> str:
    """48 bits of milliseconds, 80 random bits, Crockford base32: what any ULID library makes."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(secrets.token_bytes(10), "big")
    return "".join(CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(26)))


class RawNats:
    """The NATS client protocol, by hand: enough to publish with headers and make requests."""

    def __init__(self, url: str):
        host, _, port = url.removeprefix("nats://").rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buffer = b""
        info = self._line()
        assert info.startswith(b"INFO "), info
        assert json.loads(info[5:]).get("headers"), "the server must support headers (NATS 2.2+)"
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": True, "lang": "raw"}
        self.sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        self._expect_pong()
        self.sid = 0

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "NATS closed the connection"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _bytes(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self.buffer += self.sock.recv(65536)
        data, self.buffer = self.buffer[:n], self.buffer[n + 2 :]
        return data

    def _expect_pong(self) -> None:
        line = self._line()
        assert line == b"PONG", line  # an -ERR here says what the server refused

    @staticmethod
    def _headers(headers: dict[str, str]) -> bytes:
        return ("NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()

    def request(self, subject: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[bytes, bytes]:
        """Publish with a reply inbox and wait for the one answer: (its header block, its payload)."""
        self.sid += 1
        inbox = f"_INBOX.raw{secrets.token_hex(8)}"
        self.sock.sendall(f"SUB {inbox} {self.sid}\r\nUNSUB {self.sid} 1\r\n".encode())
        if headers is None:
            self.sock.sendall(f"PUB {subject} {inbox} {len(body)}\r\n".encode() + body + b"\r\n")
        else:
            block = self._headers(headers)
            self.sock.sendall(
                f"HPUB {subject} {inbox} {len(block)} {len(block) + len(body)}\r\n".encode() + block + body + b"\r\n"
            )
        while True:
            line = self._line()
            if line == b"PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            assert not line.startswith(b"-ERR"), line
            parts = line.split()
            if parts[0] == b"MSG":
                return b"", self._bytes(int(parts[-1]))
            if parts[0] == b"HMSG":
                data = self._bytes(int(parts[-1]))
                header_length = int(parts[-2])
                return data[:header_length], data[header_length:]

    def close(self) -> None:
        self.sock.close()


def parse_headers(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")[1:]
    return dict(line.split(": ", 1) for line in lines if line)


@pytest.fixture
def exported_schema(tmp_path):
    target = tmp_path / "messages.schema.json"
    call_command("catga_schema", format="jsonschema", output=str(target), stderr=io.StringIO())
    return json.loads(target.read_text())


def validator(document: dict, wire_name: str, part: str) -> jsonschema.Draft202012Validator:
    entry = document["messages"][wire_name][part]
    return jsonschema.Draft202012Validator({"$defs": document["$defs"], **entry})


def command(message_id: str, correlation_id: str) -> dict[str, str]:
    return {
        "Catga-Message-Id": message_id,
        "Nats-Msg-Id": message_id,
        "Catga-Type": "inventory.ReserveStock",
        "Catga-Kind": "command",
        "Catga-Correlation-Id": correlation_id,
        "Catga-QoS": "at_least_once",
        "Catga-Attempt": "1",
        "Catga-Created-At": f"{time.time():.6f}",
        "traceparent": f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01",
    }


def test_a_hand_written_command_is_handled_and_its_event_read_back(big_catalogue, workers, exported_schema):
    workers.start("inventory")
    message_id, correlation_id = ulid(), ulid()
    headers = command(message_id, correlation_id)
    body = {"order_id": "go-order-1", "lines": [{"sku": "SKU-X", "quantity": 3}]}
    assert list(validator(exported_schema, "inventory.ReserveStock", "body").iter_errors(body)) == []
    assert list(validator(exported_schema, "inventory.ReserveStock", "headers").iter_errors(headers)) == []

    client = RawNats(workers.nats_url)
    try:
        # A JetStream publish is a request: the stream answers on the reply subject once it has stored it.
        _, ack = client.request("catga.inventory.cmd.ReserveStock", json.dumps(body).encode(), headers)
        assert json.loads(ack)["stream"] == "CATGA_CMD", ack
        _, again = client.request("catga.inventory.cmd.ReserveStock", json.dumps(body).encode(), headers)
        assert json.loads(again).get("duplicate") is True  # same Nats-Msg-Id: stored once

        wait_until(
            lambda: Delivery.objects.filter(message_id=message_id, status="succeeded").exists(),
            timeout=30,
            what="the hand-written command to be handled",
        )
        assert Message.objects.get(pk=message_id).correlation_id == correlation_id
        assert Reservation.objects.get(order_id="go-order-1").lines == [{"sku": "SKU-X", "quantity": 3}]

        # The event it caused, as another service would read it (here: the stream's last message on its subject).
        def stock_reserved():
            request = json.dumps({"last_by_subj": "catga.inventory.evt.StockReserved"}).encode()
            _, answer = client.request("$JS.API.STREAM.MSG.GET.CATGA_EVT", request)
            return json.loads(answer).get("message")

        stored = wait_until(stock_reserved, timeout=15, what="StockReserved in CATGA_EVT")
    finally:
        client.close()
    event_headers = parse_headers(base64.b64decode(stored["hdrs"]))
    event = json.loads(base64.b64decode(stored["data"]))
    assert event == {"order_id": "go-order-1"}
    assert list(validator(exported_schema, "inventory.StockReserved", "body").iter_errors(event)) == []
    assert event_headers["Catga-Type"] == "inventory.StockReserved" and event_headers["Catga-Kind"] == "event"
    assert event_headers["Catga-Causation-Id"] == message_id  # caused by our command
    assert event_headers["Catga-Correlation-Id"] == correlation_id  # in our conversation
    # (With CATGA_TRACING on, the event's traceparent also continues the command's trace:
    # tests/integration/test_observability.py follows one trace through every consumer.)


def test_a_body_the_schema_refuses_is_a_dead_letter_with_the_reason(big_catalogue, workers, exported_schema):
    workers.start("inventory")
    message_id = ulid()
    headers = {**command(message_id, message_id), "Garbage-Id": f"wire-{os.getpid()}"}
    body = {"order_id": "go-order-2", "lines": [{"sku": "SKU-X", "quantity": 0}]}  # quantity must be > 0
    assert list(validator(exported_schema, "inventory.ReserveStock", "body").iter_errors(body))

    client = RawNats(workers.nats_url)
    try:
        _, ack = client.request("catga.inventory.cmd.ReserveStock", json.dumps(body).encode(), headers)
        assert json.loads(ack)["stream"] == "CATGA_CMD", ack
    finally:
        client.close()
    reason = wait_until(
        lambda: dead_letters(workers.nats_url).get(headers["Garbage-Id"]), timeout=30, what="the dead letter"
    )
    assert "schema violation in inventory.ReserveStock" in reason
    assert not Reservation.objects.filter(order_id="go-order-2").exists()
