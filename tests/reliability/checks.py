"""After the run: wait for the stack to go quiet, then check the business invariants in SQL.

lost        an order a 202 named that the database does not have
stuck       an order still pending after the bounded wait
duplicated  an effect applied twice: one key making two orders, a (message, handler)
            inbox row twice or with two successes logged, two captures or reservations for an order, or one order's
            reply event (StockReserved, PaymentCaptured, OrderConfirmed...) published twice,
            which happens only when the handler that publishes it ran twice
wrong       an order whose end does not match what its kind must end as (a declined card
            confirmed, an in-stock order cancelled by a timed-out step, ...)
books       stock that does not add up (initial = available + reserved for pending + sold),
            a confirmed order without exactly one capture, a cancelled one with a capture
dead        dead letters of the app's own messages: the mix makes no poison, so every one is a
            failure
poison      a message of a "poison storm" fault not dead-lettered with its reason
"""

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tests.reliability import garbage
from tests.reliability.load import EXPECTED, Results

# One per order, published only by the handler that did the work.
ONCE_PER_ORDER = (
    "orders.OrderPlaced",
    "orders.OrderConfirmed",
    "orders.OrderCancelled",
    "inventory.StockReserved",
    "inventory.StockReservationFailed",
    "inventory.StockReleased",
    "payments.PaymentCaptured",
    "payments.PaymentDeclined",
    "payments.PaymentRefunded",
)


@dataclass
class Report:
    orders: int = 0
    requests: int = 0
    attempts: int = 0
    replayed: int = 0
    conflicts: int = 0
    faults: Counter = field(default_factory=Counter)
    fault_log: list[str] = field(default_factory=list)
    outcomes: Counter = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    books: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    dead_count: int = 0
    poison_sent: int = 0
    poison_dead: int = 0
    poison: list[str] = field(default_factory=list)  # poison not dead-lettered with its reason
    problems: list[str] = field(default_factory=list)  # the harness's own: a fault not recovered, ...
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def violations(self) -> list[str]:
        return [
            *(f"lost: {x}" for x in self.lost),
            *(f"stuck: {x}" for x in self.stuck),
            *(f"duplicated: {x}" for x in self.duplicated),
            *(f"wrong outcome: {x}" for x in self.wrong),
            *(f"books: {x}" for x in self.books),
            *(f"dead letter: {x}" for x in self.dead),
            *(f"poison: {x}" for x in self.poison),
            *self.problems,
        ]

    @property
    def ok(self) -> bool:
        return not self.violations


def quiet(stack) -> bool:
    """Nothing left to do: no pending order, no due outbox row, no retry waiting, streams drained."""
    sql = stack.postgres.execute
    pending = sql("SELECT count(*) FROM orders_order WHERE status = 'pending'")[0][0]
    outbox = sql(
        "SELECT count(*) FROM mediator_message "
        "WHERE status = 'pending' AND (available_at IS NULL OR available_at <= now())"
    )[0][0]
    retrying = sql("SELECT count(*) FROM mediator_delivery WHERE status IN ('running', 'retrying')")[0][0]
    held = sql(
        "SELECT count(*) FROM inventory_reservation r JOIN orders_order o ON o.id = r.order_id "
        "WHERE r.status = 'reserved' AND o.status <> 'pending'"
    )[0][0]
    return not (pending or outbox or retrying or held) and stack.broker.consumers_idle()


def verify(
    stack, results: Results, initial_stock: dict[str, int], report: Report, poison: list[garbage.Garbage] = ()
) -> Report:
    sql = stack.postgres.execute
    accepted = {a.order_id: a for a in results.accepted}
    report.orders = len(accepted)
    report.requests = sum(results.requests.values())
    report.attempts, report.replayed, report.conflicts = results.attempts, results.replayed, results.conflicts
    report.duplicated += results.duplicated
    report.problems += [f"API: {a}" for a in results.anomalies[:20]]

    orders = {row[0]: (row[1], row[2]) for row in sql("SELECT id, status, reason FROM orders_order")}
    report.lost = sorted(set(accepted) - set(orders))
    report.stuck = sorted(i for i, (status, _) in orders.items() if status == "pending")
    report.outcomes = Counter(f"{status} {reason}".strip() for status, reason in orders.values())
    for order_id, order in accepted.items():
        end = orders.get(order_id)
        if end is not None and end[0] != "pending" and end not in EXPECTED[order.kind]:
            report.wrong.append(f"{order_id} ({order.kind}) ended {end[0]} {end[1]}".strip())

    poison_ids = [g.headers["Catga-Message-Id"] for g in poison if "Catga-Message-Id" in (g.headers or {})]
    _duplicates(sql, report, poison_ids)
    _payments(sql, orders, report)
    _stock(sql, initial_stock, report)

    letters = stack.broker.dead_letters(garbage.TAG)
    expected = {g.tag: g for g in poison}
    found = {tag: reason for tag, _, reason in letters if tag in expected}
    report.poison_sent = len(poison)
    report.poison_dead = sum(1 for g in poison if g.reason in found.get(g.tag, ""))
    report.poison = [
        f"{g.tag} ({g.kind}): {found.get(g.tag, 'no dead letter')!r}, expected {g.reason!r}"
        for g in poison
        if g.reason not in found.get(g.tag, "")
    ]
    own = [f"{kind}: {reason}" for tag, kind, reason in letters if tag not in expected]
    report.dead_count, report.dead = len(own), own[:50]
    # The history's dead rows of the app's own messages (about a real order): poison is about none.
    dead_rows = sql(
        "SELECT type, left(last_error, 200) FROM mediator_message WHERE status = 'dead' AND NOT id = ANY(%s) "
        "AND (type = 'orders.PlaceOrder' OR payload->>'order_id' IN (SELECT id FROM orders_order)) LIMIT 20",
        [poison_ids],
    )
    report.dead += [f"history: {t} {e}" for t, e in dead_rows] if not own else []
    return report


def _duplicates(sql, report: Report, poison_ids: list[str]) -> None:
    for message_id, handler, n in sql(
        "SELECT message_id, handler, count(*) FROM mediator_delivery GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        report.duplicated.append(f"message {message_id} has {n} inbox rows for {handler}")
    # Each success is logged in the handler's own transaction: two mean its effects committed twice.
    for message_id, handler, n in sql(
        "SELECT message_id, handler, n FROM (SELECT message_id, handler, (SELECT count(*) "
        "FROM jsonb_array_elements(attempt_log) AS e WHERE e->>'outcome' = 'succeeded') AS n "
        "FROM mediator_delivery) AS d WHERE n > 1"
    ):
        report.duplicated.append(f"message {message_id} applied {n} times by {handler}")
    for order_id, n in sql(
        "SELECT order_id, count(*) FROM payments_payment WHERE status = 'captured' GROUP BY 1 HAVING count(*) > 1"
    ):
        report.duplicated.append(f"order {order_id} captured {n} times")
    for order_id, n in sql("SELECT order_id, count(*) FROM inventory_reservation GROUP BY 1 HAVING count(*) > 1"):
        report.duplicated.append(f"order {order_id} reserved {n} times")
    for message_type, order_id, n in sql(
        "SELECT type, payload->>'order_id', count(*) FROM mediator_message WHERE type = ANY(%s) "
        "AND NOT id = ANY(%s) GROUP BY 1, 2 HAVING count(*) > 1",
        [list(ONCE_PER_ORDER), poison_ids],
    ):
        report.duplicated.append(f"{message_type} published {n} times for order {order_id}")
    for user_id, key, n in sql(
        "SELECT user_id, key, count(*) FROM orders_idempotencykey GROUP BY 1, 2 HAVING count(*) > 1"
    ):
        report.duplicated.append(f"Idempotency-Key {key} of user {user_id} stored {n} times")


def _payments(sql, orders: dict, report: Report) -> None:
    payments = defaultdict(Counter)
    for order_id, status, n in sql("SELECT order_id, status, count(*) FROM payments_payment GROUP BY 1, 2"):
        payments[order_id][status] = n
    for order_id, (status, _) in orders.items():
        paid = payments.get(order_id, Counter())
        if status == "confirmed" and (paid["captured"] != 1 or paid["refunded"]):
            report.books.append(f"confirmed order {order_id} has payments {dict(paid)}")
        if status == "cancelled" and paid["captured"]:
            report.books.append(f"cancelled order {order_id} has a capture {dict(paid)}")
    reservations = dict(sql("SELECT order_id, status FROM inventory_reservation"))
    for order_id, (status, _) in orders.items():
        held = reservations.get(order_id)
        if status == "confirmed" and held != "committed":
            report.books.append(f"confirmed order {order_id} has reservation {held}")
        if status == "cancelled" and held not in (None, "released"):
            report.books.append(f"cancelled order {order_id} has reservation {held}")


def _stock(sql, initial_stock: dict[str, int], report: Report) -> None:
    sold = Counter(
        dict(
            sql(
                "SELECT l.sku, sum(l.quantity) FROM orders_orderline l JOIN orders_order o ON o.id = l.order_id "
                "WHERE o.status = 'confirmed' GROUP BY 1"
            )
        )
    )
    held = Counter()
    for (lines,) in sql("SELECT lines FROM inventory_reservation WHERE status = 'reserved'"):
        for line in lines if isinstance(lines, list) else json.loads(lines):
            held[line["sku"]] += line["quantity"]
    for sku, on_hand, reserved in sql("SELECT sku, on_hand, reserved FROM inventory_item"):
        initial = initial_stock.get(sku)
        available = on_hand - reserved
        if initial is None or available + held[sku] + sold[sku] != initial or reserved != held[sku]:
            report.books.append(
                f"{sku}: initial {initial} != available {available} + reserved for pending {held[sku]} "
                f"+ sold {sold[sku]} (item.reserved {reserved})"
            )


def render(report: Report) -> str:
    """The table the run prints."""
    faults = ", ".join(f"{kind} {n}" for kind, n in sorted(report.faults.items()))
    rows = [
        ("orders accepted", f"{report.orders}"),
        (
            "requests",
            f"{report.requests} ({report.attempts} HTTP attempts; re-sends: {report.replayed} same order, "
            f"{report.conflicts} answered 409)",
        ),
        ("faults injected", f"{sum(report.faults.values())} ({faults})"),
        ("outcomes", ", ".join(f"{k} {v}" for k, v in sorted(report.outcomes.items()))),
        ("lost", str(len(report.lost))),
        ("duplicated", str(len(report.duplicated))),
        ("stuck", str(len(report.stuck))),
        ("wrong outcome", str(len(report.wrong))),
        ("books off", str(len(report.books))),
        ("dead letters", str(report.dead_count)),
        ("poison messages", f"{report.poison_sent} sent, {report.poison_dead} dead-lettered with their reason"),
        ("time", ", ".join(f"{k} {v:.0f}s" for k, v in report.timings.items())),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(f"{'result'.ljust(width)}  {'OK' if report.ok else 'FAILED'}")
    return "\n".join(lines)
