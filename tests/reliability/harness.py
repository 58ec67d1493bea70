"""The load-and-faults run: start the stack, drive orders while faults are injected, check the books.

    report = run(Config(orders=300, duration=75))
    print(checks.render(report)); assert report.ok, report.violations

Everything is bounded: the load window (duration, then at most half as long again
to send what is left), each fault's recovery, and the wait for the stack to settle.
"""

import contextlib
import json
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.reliability import checks, load
from tests.reliability.faults import Faults, kinds_for
from tests.reliability.redis_broker import RedisBroker
from tests.reliability.stack import CONTEXTS, Django, NatsCluster, Postgres, read_json_line, wait_until

# Run by `manage.py shell -c`: the catalogue and the customers (users with API tokens).
SEED = """
import json, os
from decimal import Decimal
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token
from apps.inventory.models import Item
spec = json.loads(os.environ["RELIABILITY_SEED"])
for sku, stock in spec["stock"].items():
    Item.objects.create(sku=sku, name=sku, price=Decimal("4.50"), on_hand=stock)
users = [User.objects.create_user(f"customer-{i}") for i in range(spec["customers"])]
print(json.dumps([Token.objects.create(user=user).key for user in users]))
"""


@dataclass
class Config:
    orders: int = 3000
    duration: float = 300.0  # seconds over which the orders are spread
    faults: int = 0  # 0: one every ~20 s, at least one of each kind
    settle: float = 240.0  # seconds the stack may take to finish everything after the load
    ack_wait: float = 6.0  # CATGA_ACK_WAIT: how soon a killed or frozen consumer's messages come back
    # Seconds of the "PostgreSQL outage" fault: 180 is longer than MAX_ATTEMPTS x ACK_WAIT with the
    # default settings (5 x 30 s) and than the saga's step timeout (ORDER_STEP_TIMEOUT, 60 s).
    db_outage: float = 180.0
    customers: int = 4
    threads: int = 6
    seed: int = 1
    keep: bool = False  # keep the temp dir (logs, stores) after the run
    transport: str = "nats"  # or "redis": one redis-server instead of the NATS cluster

    def fault_count(self) -> int:
        return self.faults or max(6, round(self.duration / 20))


class Stack:
    def __init__(self, root: Path, config: Config):
        self.root = root
        self.logs = root / "logs"
        self.logs.mkdir()
        self.postgres = Postgres(root)
        self.broker = RedisBroker(root, self.logs) if config.transport == "redis" else NatsCluster(root, self.logs)
        self.django = Django(root, self.logs, self.postgres.url(), self.broker, ack_wait=config.ack_wait)

    def start(self, stock: dict[str, int], customers: int) -> list[str]:
        self.postgres.init()
        self.broker.start()
        self.broker.wait_healthy(timeout=60)
        self.django.manage("migrate", "--noinput")
        spec = json.dumps({"stock": stock, "customers": customers})
        tokens = read_json_line(self.django.manage("shell", "-c", SEED, RELIABILITY_SEED=spec))
        self.django.start_web()
        for context in CONTEXTS:
            self.django.start_consumer(context)
        wait_until(self.whole, timeout=120, what="the stack to start")
        return tokens

    def whole(self) -> bool:
        return (
            self.postgres.running()
            and all(self.broker.healthy(name) for name in self.broker.names)
            and self.django.all_up()
        )

    def in_flight(self) -> int | None:
        """Orders still pending (None when the database does not answer)."""
        try:
            return self.postgres.execute("SELECT count(*) FROM orders_order WHERE status = 'pending'")[0][0]
        except Exception:
            return None

    def stop(self) -> None:
        for child in self.django.children():
            child.stop(timeout=30)
        self.broker.stop()
        if self.postgres.running():
            with contextlib.suppress(Exception):
                self.postgres.stop("fast")

    def tails(self) -> str:
        return "\n".join(child.tail(2000) for child in self.django.children())


def run(config: Config, say=print) -> checks.Report:
    root = Path(tempfile.mkdtemp(prefix="catga-reliability-"))
    report = checks.Report()
    stock = load.catalogue(config.orders)
    started = time.monotonic()
    stack = Stack(root, config)
    try:
        broker = "a Redis server" if config.transport == "redis" else "a 3-node NATS cluster"
        say(f"starting PostgreSQL, {broker}, gunicorn and 3 consumers in {root}")
        tokens = stack.start(stock, config.customers)
        report.timings["start-up"] = time.monotonic() - started

        customers = load.Customers(
            stack.django.base_url,
            tokens,
            orders=config.orders,
            duration=config.duration,
            seed=config.seed,
            threads=config.threads,
            outage=config.db_outage,
        )
        faults = Faults(
            stack,
            duration=config.duration,
            count=config.fault_count(),
            db_outage=config.db_outage,
            kinds=kinds_for(config.transport),
        )
        say(f"driving {config.orders} orders over {config.duration:g}s with {len(faults.schedule)} faults")
        load_started = time.monotonic()
        faults.start()
        results = customers.run()
        faults.join(timeout=config.duration + config.db_outage + 300)
        faults.stop.set()
        report.timings["load"] = time.monotonic() - load_started
        report.faults = Counter(f.kind for f in faults.injected)
        report.fault_log = [
            f"{f.at:6.1f}s  {f.kind}: {f.detail}; {f.in_flight} orders in flight, "
            + (f"whole again after {f.recovered_after:.1f}s" if f.recovered_after is not None else "NOT recovered")
            for f in faults.injected
        ]
        report.problems += [f"fault not recovered: {e}" for e in faults.errors]
        if results.not_sent:
            report.problems.append(f"{results.not_sent} requests not sent within the load window")
        if results.unanswered:
            report.problems.append(f"{len(results.unanswered)} requests unanswered after retrying for 90s")

        settle_started = time.monotonic()
        try:
            wait_until(stack.whole, timeout=120, what="the stack to be whole after the last fault")
            wait_until(lambda: checks.quiet(stack), timeout=config.settle, interval=1.0, what="the stack to settle")
        except TimeoutError as exc:
            report.problems.append(str(exc))  # the invariants below say what was left undone
        report.timings["settle"] = time.monotonic() - settle_started
        checks.verify(stack, results, stock, report, poison=faults.poison)
        report.timings["total"] = time.monotonic() - started
        if not report.ok:
            report.problems.append(f"logs kept in {root}")
            config.keep = True
        return report
    except BaseException:
        config.keep = True
        say(f"the run failed; logs kept in {root}\n{stack.tails()}")
        raise
    finally:
        stack.stop()
        if not config.keep:
            shutil.rmtree(root, ignore_errors=True)
