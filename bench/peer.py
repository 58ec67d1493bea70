"""The order saga written the Celery way (bench/celery_peer), measured beside ours in one run.

Orchestrator side, no Django (as bench/run.py): it starts the peer's processes, drives them
with the same bench/load.py, and reads the figures back from PostgreSQL and /proc/stat. The
figures both sagas get, ours and the peer's alike (`closed_loop`, `paced`):

    e2e_orders_per_s   orders accepted in the load / (first POST -> the last one's final status)
    cpu_ms_per_order   whole-machine busy CPU over that same window / those orders
    accepted_per_s     orders accepted / load duration
    p50_ms, p99_ms     at a paced 10 orders/s: the 202 reaching the client -> final status in the DB
"""

import http.client
import json
import os
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

from bench import cost, infra, load

PEER_BROKER = "redis://127.0.0.1:6379/15"  # the machine's Redis, a database of the peer's own, flushed
PEER_DATABASE = "bench_celery"
PEER_TABLE_PREFIXES = ("shop_", "django_celery_results_")
PACED_RATE = 10.0
SHM = "/dev/shm"  # noqa: S108 (gunicorn's heartbeat on tmpfs, as ours)
VARIANTS = {"celery_saga_": False, "celery_results_saga_": True}  # prefix: task history in the database
FIGURES = ["e2e_orders_per_s", "cpu_ms_per_order", "accepted_per_s", "p50_ms", "p99_ms"]


class Orders:
    """Where a saga's orders and their final status live: a table, its final-time column, its pending test."""

    def __init__(self, db: infra.Database, table: str, final_at: str, pending: str):
        self.db, self.table, self.final_at, self.pending = db, table, final_at, pending

    def settle(self, *, timeout: float) -> int:
        """Poll (cheaply, one SQL query) until no order is pending; returns how many still are."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self.db.execute(f"SELECT count(*) FROM {self.table} WHERE {self.pending}")[0][0]  # noqa: S608
            if not pending or time.monotonic() > deadline:
                return pending
            time.sleep(0.2)

    def finished_since(self, since: float) -> tuple[int, float | None]:
        """(orders created since `since` that reached a final status, the time the last one did)."""
        query = (
            f"SELECT count(*), EXTRACT(EPOCH FROM max({self.final_at})) FROM {self.table}"  # noqa: S608
            f" WHERE created_at >= to_timestamp(%s) AND NOT ({self.pending})"
        )
        count, last = self.db.execute(query, [since])[0]
        return count, None if last is None else float(last)

    def latencies_ms(self, accepted: dict[str, float]) -> list[float]:
        query = (
            f"SELECT id::text, EXTRACT(EPOCH FROM {self.final_at}) FROM {self.table}"  # noqa: S608
            f" WHERE id::text = ANY(%s) AND NOT ({self.pending})"
        )
        final = dict(self.db.execute(query, [list(accepted)]))
        return [(float(final[pk]) - at) * 1000 for pk, at in accepted.items() if pk in final]


class CpuSampler(threading.Thread):
    """The whole machine's busy jiffies (user+nice+system+irq+softirq of /proc/stat), every 0.1 s."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[tuple[float, int]] = []
        self._done = threading.Event()

    @staticmethod
    def busy() -> int:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
        return user + nice + system + irq + softirq

    def run(self) -> None:
        while True:
            self.samples.append((time.time(), self.busy()))
            if self._done.wait(0.1):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()

    def busy_ms(self, start: float, end: float) -> float:
        """CPU-ms spent between the last sample at or before `start` and the first at or after `end`."""
        first = next((s for s in reversed(self.samples) if s[0] <= start), self.samples[0])
        last = next((s for s in self.samples if s[0] >= end), self.samples[-1])
        return (last[1] - first[1]) * 1000 / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest rank, as bench/drive.py's."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def closed_loop(
    bench, p, base: str, token: str, orders: Orders, *, prefix: str, drain: float, sizes=("saga_seconds", "saga_warmup")
) -> tuple[dict, dict]:
    """8 keep-alive clients for the warm-up and the window, then the drain: (the load's summary, figures)."""
    seconds = sum(bench.size(name) for name in sizes)
    cpu = CpuSampler()
    cpu.start()
    try:
        load = bench._load(p, base, token, seconds=seconds, clients=8, out=bench.logs / f"{prefix}accepted.json")
        left = orders.settle(timeout=drain)
    finally:
        cpu.stop()
    finished, last = orders.finished_since(load["start"])
    if left or finished < load["accepted"]:
        bench.notes.append(f"{prefix}: {finished} of {load['accepted']} orders final after the drain ({left} pending)")
    bench.extra[prefix + "load"] = {"accepted": load["accepted"], "finished": finished, "seconds": seconds}
    figures = {
        "accepted_per_s": load["accepted"] / (load["end"] - load["start"]),
        "e2e_orders_per_s": finished / (last - load["start"]) if last else float("nan"),
        "cpu_ms_per_order": cpu.busy_ms(load["start"], last) / finished if finished else float("nan"),
    }
    return load, figures


def paced(bench, p, base: str, token: str, orders: Orders, *, prefix: str, drain: float) -> dict:
    """Open loop at 10 orders/s (the backlog drained first): accept -> final status, p50 and p99."""
    out = bench.logs / f"{prefix}paced.json"
    bench._load(p, base, token, seconds=bench.size("latency_seconds"), clients=8, rate=PACED_RATE, out=out)
    orders.settle(timeout=drain)
    values = orders.latencies_ms(json.loads(out.read_text()))
    bench.extra[prefix + "paced_finished"] = len(values)
    return {"p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99)}


def ours(db: infra.Database) -> Orders:
    return Orders(db, "orders_order", "updated_at", "status = 'pending'")


# -- the peer ------------------------------------------------------------------


def peer_database(db: infra.Database) -> infra.Database:
    parts = urlsplit(db.url)
    return infra.Database(urlunsplit(parts._replace(path="/" + PEER_DATABASE)))


def place_one(base: str, token: str) -> None:
    """One order before the clock starts: the web, the broker and the worker all answer."""
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    body = {"customer_id": "warm", "lines": [{"sku": load.skus()[0], "quantity": 1}], "payment_token": "tok_visa"}
    try:
        conn.request(
            "POST",
            "/api/orders/",
            json.dumps(body),
            {"Content-Type": "application/json", "Authorization": f"Token {token}"},
        )
        response = conn.getresponse()
        if response.status != 202:
            raise RuntimeError(f"the peer answered {response.status}: {response.read()[:500]!r}")
    finally:
        conn.close()


def celery_saga(bench) -> None:
    """Both variants of the peer, their figures under celery_saga_* and celery_results_saga_*."""
    import redis

    keys = [prefix + figure for prefix in VARIANTS for figure in FIGURES]
    try:
        with redis.Redis.from_url(PEER_BROKER, socket_connect_timeout=2) as client:
            client.ping()
    except redis.RedisError as exc:
        bench.log(f"skipping the Celery peer: {exc}")
        for key in keys:
            bench.results[key], bench.skipped[key] = None, f"Redis at 127.0.0.1:6379 unreachable: {exc}"
        return
    db = peer_database(bench.db)
    db.ensure_exists()
    env = {
        "DJANGO_SETTINGS_MODULE": "bench.celery_peer.settings",
        "DATABASE_URL": db.url,
        "CELERY_BROKER_URL": PEER_BROKER,
    }
    setup = bench.procs()
    setup.run([sys.executable, "-m", "django", "migrate", "--noinput", "-v", "0"], parse=False, **env)
    for prefix, results in VARIANTS.items():
        for figure, value in run_variant(bench, db, env | {"PEER_RESULTS": "1" if results else "0"}, prefix).items():
            bench.results[prefix + figure] = value


def run_variant(bench, db: infra.Database, env: dict, prefix: str) -> dict:
    import redis

    with redis.Redis.from_url(PEER_BROKER) as client:
        client.flushdb()
    tables = [row[0] for row in db.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    emptied = [t for t in tables if t.startswith(PEER_TABLE_PREFIXES)]
    db.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in emptied) + " CASCADE")
    p = bench.procs()
    py = sys.executable
    shop = p.run([py, "-m", "django", "seed_bench"], **env)
    worker = p.start(
        prefix + "worker",
        [
            py, "-m", "celery", "-A", "bench.celery_peer", "worker", "--pool", "prefork", "--concurrency", "4",
            "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
        ],
        **env,
    )  # fmt: skip
    port = infra.free_port()
    web = p.start(
        prefix + "gunicorn",
        [
            py, "-m", "gunicorn", "bench.celery_peer.wsgi:application", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--keep-alive", "5",
            "--max-requests", "1000", "--max-requests-jitter", "100", "--worker-tmp-dir", SHM,
            "--access-logfile", "-",
        ],
        **env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    infra.wait_until(lambda: infra.http_status(base + "/health/") == 200, timeout=60, what="the peer's gunicorn")
    orders = Orders(db, "shop_order", "finished_at", "finished_at IS NULL")
    bench.log(f"{prefix.rstrip('_')}: up, measuring")
    place_one(base, shop["token"])
    if orders.settle(timeout=60):
        raise RuntimeError(f"the peer's worker finished no order in 60 s (logs in {bench.logs})")
    meter = cost.Meter(db, admin=db.admin(), redis_url=PEER_BROKER)
    roles = {"web": [web], "worker": [worker]}
    meter.start(roles, servers={"postgres": cost.postgres_pid(bench.embedded), "redis": cost.redis_pid(PEER_BROKER)})
    metered_since = time.time()
    try:
        sizes = ("peer_seconds", "peer_warmup")  # the saga's in a full run; shorter with --quick (smoke test)
        figures = closed_loop(bench, p, base, shop["token"], orders, prefix=prefix, drain=300, sizes=sizes)[1]
        return figures | paced(bench, p, base, shop["token"], orders, prefix=prefix, drain=120)
    finally:
        bench.extra[prefix + "order_counts"] = dict(
            db.execute("SELECT status, count(*) FROM shop_order GROUP BY status")
        )
        # The history the results variant keeps: one row per task run (none without a backend).
        bench.extra[prefix + "task_results"] = db.execute("SELECT count(*) FROM django_celery_results_taskresult")[0][0]
        meter.take_cpu(roles)
        p.stop_all()
        bench.extra[prefix + "cost"] = meter.per_order(orders.finished_since(metered_since)[0])
