"""The Django side of the benchmarks, one sub-command per job, each printing one JSON line.

    python -m bench.drive send --type DoNothing --count N [--per-tx K] [--rate R]
    python -m bench.drive hop-latency --since T
    python -m bench.drive inprocess --count N
    python -m bench.drive seed-shop
    python -m bench.drive order-latency --accepted FILE
    python -m bench.drive confirmed-timeline --since T --until T

Run with the environment bench/run.py gives it (DATABASE_URL, NATS_URL, the bench
context in CATGA_EXTRA_APPS).
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "catga_site.settings")

import django  # noqa: E402

django.setup()

from django.db import connection, transaction  # noqa: E402

from apps.mediator.runtime import mediator  # noqa: E402
from bench.noop_app import contracts  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def wait_published(timeout: float = 120) -> None:
    """Until every after-commit publish handed to the transport has been acknowledged."""
    transport = mediator.transport
    inflight = getattr(transport, "_inflight", None)
    if inflight is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pending = list(inflight)
        except RuntimeError:  # changed size while copied: try again
            continue
        if not pending:
            return
        concurrent.futures.wait(pending, timeout=1)


def send(args) -> dict:
    cls = getattr(contracts, args.type)
    interval = 1.0 / args.rate if args.rate else 0.0
    if args.warm:  # connect and provision before the clock starts
        mediator.send(cls(n=-1))
        wait_published()
    start = time.time()
    next_at = time.monotonic()
    sent = 0
    while sent < args.count:
        with transaction.atomic():
            for _ in range(min(args.per_tx, args.count - sent)):
                mediator.send(cls(n=sent))
                sent += 1
        if interval:
            next_at += interval * args.per_tx
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    sent_at = time.time()
    wait_published()
    return {"start": start, "sent": sent_at, "published": time.time(), "count": sent + (1 if args.warm else 0)}


def hop_latency(args) -> dict:
    """Send -> handled per message, from the history: the handler's finish minus the envelope's creation."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT EXTRACT(EPOCH FROM (d.finished_at - m.created_at)) * 1000
            FROM mediator_delivery d JOIN mediator_message m ON m.id = d.message_id
            WHERE m.type = %s AND d.status = 'succeeded' AND m.created_at >= to_timestamp(%s)
            """,
            [args.wire_type, args.since],
        )
        values = [float(row[0]) for row in cursor.fetchall()]
    return {"count": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99)}


def inprocess(args) -> dict:
    """mediator.send through the default pipeline with the in-memory transport (handled in this thread).

    100 sends per transaction, as a request or a handler sends them: the time per call
    is the mediator's (outbox row, hand-over after commit, dispatch, pipeline, history),
    with one commit shared by 100 rather than a disk flush per call.
    """
    cls = contracts.DoNothing

    def run(count: int) -> None:
        for start in range(0, count, 100):
            with transaction.atomic():
                for i in range(start, min(count, start + 100)):
                    mediator.send(cls(n=i))

    run(100)  # warm: connections, decoders, caches
    start = time.perf_counter()
    run(args.count)
    per_call = (time.perf_counter() - start) / args.count * 1e6
    return {"us": per_call, "count": args.count}


def seed_shop(args) -> dict:
    from decimal import Decimal

    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    from apps.inventory.models import Item
    from bench.load import skus

    user, _ = get_user_model().objects.get_or_create(username="bench")
    token, _ = Token.objects.get_or_create(user=user)
    items = skus()
    for sku in items:
        Item.objects.update_or_create(
            sku=sku, defaults={"name": "Benchmark widget", "price": Decimal("1.00"), "on_hand": 10**9, "reserved": 0}
        )
    return {"token": token.key, "skus": len(items)}


def order_latency(args) -> dict:
    """Accepted (the 202 reached the client) -> confirmed (the order row's last update)."""
    from apps.orders.models import Order

    accepted = json.loads(Path(args.accepted).read_text())
    confirmed = dict(Order.objects.filter(pk__in=list(accepted), status="confirmed").values_list("pk", "updated_at"))
    values = [(confirmed[pk].timestamp() - at) * 1000 for pk, at in accepted.items() if pk in confirmed]
    return {
        "placed": len(accepted),
        "confirmed": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def order_counts(args) -> dict:
    from django.db.models import Count

    from apps.orders.models import Order

    return dict(Order.objects.values_list("status").annotate(n=Count("pk")).values_list("status", "n"))


def confirmed_between(args) -> dict:
    """Orders confirmed in [since, until): how many, and how many were still pending at the end."""
    import datetime as dt

    from apps.orders.models import Order

    since = dt.datetime.fromtimestamp(args.since, tz=dt.UTC)
    until = dt.datetime.fromtimestamp(args.until, tz=dt.UTC)
    confirmed = Order.objects.filter(status="confirmed", updated_at__gte=since, updated_at__lt=until).count()
    return {"confirmed": confirmed, "pending": Order.objects.filter(status="pending").count()}


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="job", required=True)
    p = sub.add_parser("send")
    p.add_argument("--type", default="DoNothing")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--per-tx", type=int, default=1)
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    p.add_argument("--warm", action="store_true", help="send one message before the clock starts")
    p = sub.add_parser("hop-latency")
    p.add_argument("--since", type=float, required=True)
    p.add_argument("--wire-type", default="bench.DoNothing")
    p = sub.add_parser("inprocess")
    p.add_argument("--count", type=int, default=2000)
    sub.add_parser("seed-shop")
    p = sub.add_parser("order-latency")
    p.add_argument("--accepted", required=True)
    sub.add_parser("order-counts")
    p = sub.add_parser("confirmed-between")
    p.add_argument("--since", type=float, required=True)
    p.add_argument("--until", type=float, required=True)
    args = parser.parse_args()
    job = {
        "send": send,
        "hop-latency": hop_latency,
        "inprocess": inprocess,
        "seed-shop": seed_shop,
        "order-latency": order_latency,
        "order-counts": order_counts,
        "confirmed-between": confirmed_between,
    }[args.job]
    result = job(args)
    print(json.dumps(result), flush=True)
    if args.job == "send":
        mediator.transport.close()


if __name__ == "__main__":
    main()
