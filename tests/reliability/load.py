"""The customers: orders through the REST API, paced, with a realistic mix, retried as a client would.

Every order carries an Idempotency-Key; a request that fails in transit or with a 5xx
(the web server killed, PostgreSQL restarting) is sent again with the same key and
body, as a payment client would, until it is answered or its deadline passes. An
order counts as accepted only once a 202 names it. On top of the orders, the mix
re-sends some of them (same key, same body: the same order must come back) and
sends some keys again with another body (a 409 must come back).
"""

import http.client
import json
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

# SKU: (stock, price). PLENTY never runs out, LIMITED does during the run, RARE never suffices.
PLENTY = [f"SKU-P{i}" for i in range(1, 5)]
LIMITED = "SKU-LIMITED"
RARE = "SKU-RARE"
RARE_STOCK = 3

# What each kind of order must end as: {(status, reason), ...}.
EXPECTED = {
    "in stock": {("confirmed", "")},
    "flaky": {("confirmed", "")},
    "limited": {("confirmed", ""), ("cancelled", "out_of_stock")},
    "out of stock": {("cancelled", "out_of_stock")},
    "declined": {("cancelled", "payment_declined")},
}
# Relative weights of the requests: the five kinds of order, then the two kinds of re-send
# (of an order accepted earlier: the same key and body, or the same key and another body).
MIX = {"in stock": 48, "flaky": 12, "limited": 12, "out of stock": 7, "declined": 11, "duplicate": 7, "conflict": 3}
ORDER_WEIGHTS = {kind: weight for kind, weight in MIX.items() if kind in EXPECTED}
RETRYABLE = {500, 502, 503, 504}


def catalogue(orders: int) -> dict[str, int]:
    """Initial stock per SKU: LIMITED is enough for about half of its orders."""
    limited = max(5, round(orders * MIX["limited"] / sum(ORDER_WEIGHTS.values()) * 1.5 / 2))
    return {**dict.fromkeys(PLENTY, 10_000_000), LIMITED: limited, RARE: RARE_STOCK}


@dataclass
class Accepted:
    order_id: str
    kind: str
    user: int
    key: str
    body: dict


@dataclass
class Results:
    accepted: list[Accepted] = field(default_factory=list)
    requests: Counter = field(default_factory=Counter)  # by kind, one per logical request
    attempts: int = 0  # HTTP requests sent, retries included
    retried: int = 0  # attempts that failed in transit or with a 5xx and were sent again
    replayed: int = 0  # re-sends answered with the same order
    conflicts: int = 0  # re-sends with another body answered 409
    unanswered: list[str] = field(default_factory=list)  # gave up at the request deadline
    not_sent: int = 0  # still queued when the load window closed
    anomalies: list[str] = field(default_factory=list)  # answers the API must never give
    duplicated: list[str] = field(default_factory=list)  # one key, two orders


class Customers:
    def __init__(
        self,
        base_url: str,
        tokens: list[str],
        *,
        orders: int,
        duration: float,
        seed: int,
        threads: int = 6,
        outage: float = 0.0,
    ):
        host, port = base_url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self.tokens = tokens
        self.orders, self.duration, self.threads = orders, duration, threads
        self.rng = random.Random(seed)
        self.results = Results()
        self._lock = threading.Lock()
        self._next = 0
        self.stop = threading.Event()
        # A request is retried through the longest outage the faults make (the database's),
        # as a client behind a load balancer would; the window grows by as much.
        self.outage = outage
        self.request_deadline = 90.0 + outage
        # The schedule: exactly `orders` new orders, re-sends mixed in (after the first tenth) at the mix's rate.
        self.plan = self.rng.choices(list(ORDER_WEIGHTS), list(ORDER_WEIGHTS.values()), k=orders)
        for kind in ("duplicate", "conflict"):
            for _ in range(round(orders * MIX[kind] / sum(ORDER_WEIGHTS.values()))):
                self.plan.insert(self.rng.randint(max(1, orders // 10), len(self.plan)), kind)
        self.interval = duration / max(len(self.plan), 1)

    # -- running -----------------------------------------------------------------

    def run(self) -> Results:
        started = time.monotonic()
        window_end = started + self.duration * 1.5 + self.outage  # bounded, however slow the stack is
        workers = [
            threading.Thread(target=self._worker, args=(started, window_end), daemon=True, name=f"customer-{i}")
            for i in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=self.duration * 1.5 + self.outage + self.request_deadline + 60)
        return self.results

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.plan):
                return None
            self._next += 1
            return self._next - 1

    def _worker(self, started: float, window_end: float) -> None:
        conn = None
        rng = random.Random(self.rng.random())
        while (index := self._take()) is not None:
            due = started + index * self.interval
            if self.stop.wait(max(0.0, due - time.monotonic())) or time.monotonic() > window_end:
                with self._lock:
                    self.results.not_sent += len(self.plan) - index
                    self._next = len(self.plan)
                return
            conn = self._one(self.plan[index], rng, conn)

    def _one(self, kind: str, rng: random.Random, conn):
        if kind in ("duplicate", "conflict"):
            with self._lock:
                earlier = rng.choice(self.results.accepted) if self.results.accepted else None
            return self._resend(kind, earlier, rng, conn) if earlier else conn
        user = rng.randrange(len(self.tokens))
        body = order_body(kind, rng)
        key = f"{kind.replace(' ', '-')}-{rng.getrandbits(64):016x}"
        status, answer, conn = self._post(user, key, body, conn)
        with self._lock:
            self.results.requests[kind] += 1
            if status == 202:
                self.results.accepted.append(Accepted(answer["id"], kind, user, key, body))
            elif status is None:
                self.results.unanswered.append(key)
            else:
                self.results.anomalies.append(f"{kind} order answered {status}: {answer}")
        return conn

    def _resend(self, kind: str, earlier: Accepted, rng: random.Random, conn):
        body = earlier.body
        if kind == "conflict":
            body = {**body, "lines": [{**body["lines"][0], "quantity": body["lines"][0]["quantity"] + 1}]}
        status, answer, conn = self._post(earlier.user, earlier.key, body, conn)
        with self._lock:
            self.results.requests[kind] += 1
            if status is None:
                self.results.unanswered.append(earlier.key)
            elif kind == "duplicate" and status == 202 and answer["id"] == earlier.order_id:
                self.results.replayed += 1
            elif kind == "conflict" and status == 409:
                self.results.conflicts += 1
            elif status == 202:
                made = f"key {earlier.key} ({kind}) made {answer['id']} after {earlier.order_id}"
                self.results.duplicated.append(made)
            else:
                self.results.anomalies.append(f"{kind} of {earlier.order_id} answered {status}: {answer}")
        return conn

    # -- HTTP ----------------------------------------------------------------------

    def _post(self, user: int, key: str, body: dict, conn):
        """(status, parsed answer, connection); status None when no answer came before the deadline."""
        payload = json.dumps(body).encode()
        headers = {
            "Authorization": f"Token {self.tokens[user]}",
            "Content-Type": "application/json",
            "Idempotency-Key": key,
        }
        deadline = time.monotonic() + self.request_deadline
        delay = 0.2
        while True:
            with self._lock:
                self.results.attempts += 1
            try:
                conn = conn or http.client.HTTPConnection(self.host, self.port, timeout=30)
                conn.request("POST", "/api/orders/", payload, headers)
                response = conn.getresponse()
                raw = response.read()
                if response.status not in RETRYABLE:
                    return response.status, _parse(raw), conn
            except (OSError, http.client.HTTPException):
                pass
            if conn is not None:
                conn.close()
                conn = None
            if time.monotonic() + delay > deadline or self.stop.is_set():
                return None, None, conn
            with self._lock:
                self.results.retried += 1
            if self.stop.wait(delay):  # the client's back-off between retries of one request
                return None, None, conn
            delay = min(delay * 2, 2.0)


def order_body(kind: str, rng: random.Random) -> dict:
    token = {"declined": "tok_declined", "flaky": "tok_flaky"}.get(kind, "tok_visa")
    if kind == "limited":
        lines = [{"sku": LIMITED, "quantity": rng.randint(1, 2)}]
    elif kind == "out of stock":
        lines = [{"sku": RARE, "quantity": rng.randint(RARE_STOCK + 1, RARE_STOCK + 5)}]
    else:
        lines = [{"sku": sku, "quantity": rng.randint(1, 3)} for sku in rng.sample(PLENTY, rng.randint(1, 3))]
    return {"customer_id": f"c-{rng.randrange(1000)}", "lines": lines, "payment_token": token}


def _parse(raw: bytes):
    try:
        return json.loads(raw)
    except ValueError:
        return raw[:200]
