"""`make run`'s stack (`manage.py up`) serving 100 orders end to end over HTTP.

The stack runs as on a laptop: embedded NATS and embedded PostgreSQL in its own data
folder (DATABASE_URL and NATS_URL unset), the web server and one consumer per context,
all child processes of `up`. A second `up` on the same folder keeps the first one's data.
"""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import nats
import pytest

from apps.mediator.servers.ports import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.e2e

CATALOGUE = {"SKU-KEYBOARD": 500, "SKU-MOUSE": 1000, "SKU-MONITOR": 200, "SKU-CABLE": 5000, "SKU-RARE": 3}


class Client:
    def __init__(self, base: str, token: str | None = None):
        self.base, self.token = base, token

    def call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Token {self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())


class Up:
    """`manage.py up` as a child process, its output in a log file."""

    def __init__(self, data: Path, log: Path, **extra_env):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NATS_URL", "REDIS_URL")}
        env.update({"DJANGO_DEBUG": "1", "CATGA_DATA_DIR": str(data), "PYTHONUNBUFFERED": "1", **extra_env})
        self.log = log
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "manage.py", "up", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(self._ready, timeout=120, what="the stack's 'Ready:' line")
        except TimeoutError:
            self.proc.kill()
            pytest.fail("the stack did not start:\n" + self.text()[-5000:])
        self.startup_seconds = time.monotonic() - started
        token = re.search(r"API token for 'demo': ([0-9a-f]+)", self.text()).group(1)
        self.client = Client(f"http://127.0.0.1:{self.port}", token)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def nats_url(self) -> str:
        return re.search(r"NATS at (nats://\S+)", self.text()).group(1)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"up exited with {self.proc.returncode}:\n" + self.text()[-5000:])
        return "Ready: http" in self.text()

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C does
        try:
            assert self.proc.wait(timeout=60) == 0, self.text()[-3000:]
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path):
    up = Up(tmp_path / "data", tmp_path / "up.log")
    yield up.client, up.log
    up.stop()


def settled_order(client: Client, order_id: str) -> dict:
    def final():
        _, order = client.call("GET", f"/api/orders/{order_id}/")
        return order if order["status"] != "pending" else None

    return wait_until(final, timeout=60, interval=0.2, what=f"order {order_id} to settle")


def refused_without_a_user(url: str) -> str:
    """The error NATS answers a client without credentials with ('' when it lets it in)."""

    async def connect():
        try:
            nc = await nats.connect(url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5)
        except Exception as exc:
            return str(exc)
        await nc.close()
        return ""

    return asyncio.run(connect())


def test_a_second_run_keeps_the_first_runs_data_and_loads_the_demo_data_once(tmp_path, record_property):
    data = tmp_path / "data"
    first = Up(data, tmp_path / "first.log")
    try:
        assert "a new cluster" in first.text()
        # NATS runs with a user per role: a client without one is turned away.
        assert "authorization violation" in refused_without_a_user(first.nats_url).lower()
        passwords = json.loads((data / "nats-passwords.json").read_text())
        assert set(passwords) == {"web", "orders", "inventory", "payments", "admin"}
        _, order = first.client.call(
            "POST",
            "/api/orders/",
            {"customer_id": "c1", "lines": [{"sku": "SKU-MOUSE", "quantity": 2}], "payment_token": "tok_visa"},
        )
        assert settled_order(first.client, order["id"])["status"] == "confirmed"
    finally:
        first.stop()
    assert "PostgreSQL: stopping" in first.text()

    second = Up(data, tmp_path / "second.log")
    try:
        assert "reusing its data" in second.text(), second.text()[-3000:]
        assert second.client.token == first.client.token  # the same demo user, not a new one
        assert json.loads((data / "nats-passwords.json").read_text()) == passwords
        _, kept = second.client.call("GET", f"/api/orders/{order['id']}/")
        assert kept["status"] == "confirmed"
        _, items = second.client.call("GET", "/api/inventory/items/")
        mouse = next(item for item in items["results"] if item["sku"] == "SKU-MOUSE")
        assert mouse["on_hand"] == CATALOGUE["SKU-MOUSE"] - 2  # the catalogue was not loaded again
    finally:
        second.stop()
    record_property("first_start_s", round(first.startup_seconds, 1))
    record_property("second_start_s", round(second.startup_seconds, 1))
    print(f"\nmanage.py up: first start {first.startup_seconds:.1f} s, second {second.startup_seconds:.1f} s")


def test_one_hundred_orders_through_the_local_stack_all_finish_consistently(stack):
    client, log = stack
    skus = list(CATALOGUE)
    tokens = ["tok_visa"] * 6 + ["tok_declined", "tok_flaky"]
    placed = {}
    for i in range(100):
        lines = [{"sku": skus[i % len(skus)], "quantity": 1 + i % 3}]
        status, order = client.call(
            "POST",
            "/api/orders/",
            {"customer_id": f"c{i % 7}", "lines": lines, "payment_token": tokens[i % len(tokens)]},
        )
        assert status == 202 and order["status"] == "pending"
        placed[order["id"]] = lines

    final = {}
    deadline = time.monotonic() + 120
    while len(final) < len(placed) and time.monotonic() < deadline:
        for order_id in placed.keys() - final.keys():
            _, order = client.call("GET", f"/api/orders/{order_id}/")
            if order["status"] != "pending":
                final[order_id] = order
        time.sleep(0.2)
    stuck = placed.keys() - final.keys()
    assert not stuck, f"{len(stuck)} orders still pending:\n" + log.read_text(errors="replace")[-4000:]

    statuses = Counter((o["status"], o["reason"]) for o in final.values())
    assert set(statuses) <= {("confirmed", ""), ("cancelled", "payment_declined"), ("cancelled", "out_of_stock")}
    for i, order_id in enumerate(placed):
        if i % 8 == 6:  # tok_declined: never confirmed; declined unless the stock ran out first
            expected = (
                {"payment_declined", "out_of_stock"} if skus[i % len(skus)] == "SKU-RARE" else {"payment_declined"}
            )
            assert final[order_id]["reason"] in expected, final[order_id]
        elif skus[i % len(skus)] != "SKU-RARE":
            assert final[order_id]["status"] == "confirmed", final[order_id]

    sold = Counter()
    for order_id, order in final.items():
        _, payments = client.call("GET", f"/api/payments/?order_id={order_id}")
        captured = [p for p in payments["results"] if p["status"] == "captured"]
        if order["status"] == "confirmed":
            assert len(captured) == 1, (order_id, payments)
            for line in placed[order_id]:
                sold[line["sku"]] += line["quantity"]
        else:
            assert captured == [], (order_id, payments)

    deadline = time.monotonic() + 30
    while True:
        _, items = client.call("GET", "/api/inventory/items/")
        by_sku = {item["sku"]: item for item in items["results"]}
        settled = all(item["reserved"] == 0 for item in by_sku.values())
        if settled or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for sku, initial in CATALOGUE.items():
        assert by_sku[sku]["reserved"] == 0, by_sku[sku]
        assert by_sku[sku]["on_hand"] == initial - sold[sku], (sku, by_sku[sku], sold[sku])


def test_make_run_with_catga_transport_redis_runs_the_stack_on_an_embedded_redis(tmp_path):
    up = Up(tmp_path / "data", tmp_path / "up.log", CATGA_TRANSPORT="redis")
    try:
        text = up.text()
        assert re.search(r"Redis at redis://127\.0\.0\.1:\d+", text), text[-3000:]
        assert "NATS at" not in text
        ids = []
        for token in ("tok_visa", "tok_declined", "tok_flaky"):
            _, order = up.client.call(
                "POST",
                "/api/orders/",
                {"customer_id": "c1", "lines": [{"sku": "SKU-CABLE", "quantity": 1}], "payment_token": token},
            )
            ids.append(order["id"])
        finals = [settled_order(up.client, order_id) for order_id in ids]
        assert [(o["status"], o["reason"]) for o in finals] == [
            ("confirmed", ""),
            ("cancelled", "payment_declined"),
            ("confirmed", ""),
        ]
    finally:
        up.stop()
    # Its AOF is in the data folder, so a second `make run` keeps what the first queued.
    assert any((tmp_path / "data").rglob("appendonly.aof*"))
