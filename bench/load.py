"""HTTP load for the order saga: POST /api/orders/ over keep-alive connections.

    python -m bench.load --base http://127.0.0.1:PORT --token T --seconds 35 --clients 16 --out accepted.json
    python -m bench.load ... --rate 100      # open loop: one order every 1/rate s, whatever the answers

Writes {order id: time the 202 arrived} to --out and prints a JSON summary. No Django here.
Each order takes one item, at random among BENCH_SKUS of them (`skus()`; 1: all the same).
"""

import argparse
import http.client
import json
import os
import random
import threading
import time
from urllib.parse import urlsplit


def skus() -> list[str]:
    """The items the bench's shops stock (both seed them from here) and its orders take."""
    count = int(os.environ.get("BENCH_SKUS", "1"))
    return ["SKU-BENCH"] if count <= 1 else [f"SKU-BENCH-{i:05d}" for i in range(count)]


def body(sku: str) -> str:
    return json.dumps({"customer_id": "bench", "lines": [{"sku": sku, "quantity": 1}], "payment_token": "tok_visa"})


class Client:
    def __init__(self, base: str, token: str):
        parts = urlsplit(base)
        self.host, self.port = parts.hostname, parts.port
        self.headers = {"Content-Type": "application/json", "Authorization": f"Token {token}"}
        self.conn = None
        self.skus = skus()
        self.random = random.Random(id(self))

    def place(self) -> tuple[int, dict | None]:
        payload = body(self.random.choice(self.skus))
        for attempt in (1, 2):  # a keep-alive connection the server closed (worker recycled): reconnect once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
            try:
                self.conn.request("POST", "/api/orders/", body=payload, headers=self.headers)
                response = self.conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    return 0, None
                continue
            if response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return response.status, (json.loads(data) if response.status == 202 else None)
        return 0, None


def run(base: str, token: str, seconds: float, clients: int, rate: float) -> tuple[dict, dict]:
    accepted: dict[str, float] = {}
    errors: dict[int, int] = {}
    lock = threading.Lock()
    start = time.monotonic()
    stop_at = start + seconds
    ticket = iter(range(10**9))

    def worker():
        client = Client(base, token)
        while True:
            if rate:
                with lock:
                    n = next(ticket)
                due = start + n / rate
                if due >= stop_at:
                    return
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            elif time.monotonic() >= stop_at:
                return
            status, order = client.place()
            now = time.time()
            with lock:
                if order is not None:
                    accepted[order["id"]] = now
                else:
                    errors[status] = errors.get(status, 0) + 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    wall_start = time.time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = {
        "start": wall_start,
        "end": time.time(),
        "accepted": len(accepted),
        "errors": {str(k): v for k, v in errors.items()},
    }
    return accepted, summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--seconds", type=float, default=35)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=0.0, help="orders per second, open loop (0: closed loop)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    accepted, summary = run(args.base, args.token, args.seconds, args.clients, args.rate)
    with open(args.out, "w") as f:
        json.dump(accepted, f)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
