"""The cost model (issue 16): what one order costs each saga, counted, not timed.

A `Meter` snapshots the counters before a saga's load and after its processes stopped
(a PostgreSQL backend flushes its statistics when it exits, so nothing is left unread),
and `per_order` divides the differences by the orders that finished:

    statements      pg_stat_statements calls in the saga's database, by kind (SELECT, INSERT,
                    UPDATE, DELETE, BEGIN/COMMIT/ROLLBACK, other); None without the extension
                    preloaded (the bench's embedded PostgreSQL preloads it)
    commits         pg_stat_database.xact_commit of that database
    rows            pg_stat_user_tables inserted / updated / deleted, per table and in all
    index_entries   rows inserted or updated off HOT, times the table's indexes: the index tuples written
    broker          NATS: messages stored in the streams, deliveries and acks of the durables;
                    Redis: commands (INFO commandstats), for the Celery peer
    cpu_ms          user + system CPU of each process (its reaped children too: gunicorn's
                    recycled workers), by role, over the span; and the servers' (the embedded
                    PostgreSQL's postmaster with its backends, nats-server, redis-server)

The bench's own polling (the drain's one count query every 0.2 s) is in the statements too:
a few dozen in all, under 0.1 % of a run's.
"""

import asyncio
import os
import re
from collections import Counter
from pathlib import Path

from bench import infra

KINDS = {"select": "select", "insert": "insert", "update": "update", "delete": "delete", "with": "select"}
TOP = 25  # statements listed by calls per order
TRANSACTION = {"begin", "commit", "rollback", "savepoint", "release", "start"}


def kind_of(query: str) -> str:
    word = re.match(r"\s*(\w+)", query)
    word = word.group(1).lower() if word else ""
    if word in TRANSACTION:
        return "transaction"
    return KINDS.get(word, "other")


def process_cpu_ms(pid: int) -> float:
    """user + system CPU of `pid`, of its children it reaped, and of its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    total = (utime + stime + cutime + cstime) * 1000 / tick
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        total += sum(process_cpu_ms(int(child)) for child in children)
    return total


class Meter:
    def __init__(self, db: infra.Database, *, admin: infra.Database, nats=None, redis_url: str | None = None):
        self.db, self.admin, self.nats, self.redis_url = db, admin, nats, redis_url
        self.statements_available = self._enable_statements()
        self.before: dict = {}
        self.cpu: dict[str, float] = {}
        self._cpu_before: dict[str, float] = {}
        self.servers: dict[str, int] = {}

    def _enable_statements(self) -> bool:
        import psycopg

        try:
            self.admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            self.admin.execute("SELECT 1 FROM pg_stat_statements LIMIT 1")
        except psycopg.Error:
            return False
        return True

    # -- counters ----------------------------------------------------------------

    def snapshot(self) -> dict:
        name = self.db.name
        snap = {
            "commits": self.admin.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [name])[0][0],
            "tables": {
                table: (ins, upd, hot, dele, indexes)
                for table, ins, upd, hot, dele, indexes in self.db.execute(
                    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del,"
                    " (SELECT count(*) FROM pg_index i WHERE i.indrelid = t.relid)"
                    " FROM pg_stat_user_tables t"
                )
            },
        }
        if self.statements_available:
            rows = self.admin.execute(
                "SELECT query, calls FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
                " WHERE d.datname = %s",
                [name],
            )
            kinds, queries = Counter(), Counter()
            for query, calls in rows:
                kinds[kind_of(query)] += calls
                queries[query] += calls
            snap["statements"], snap["queries"] = kinds, queries
        if self.nats is not None:
            snap["nats"] = self._nats()
        if self.redis_url:
            snap["redis"] = self._redis()
        return snap

    def _nats(self) -> dict:
        import nats

        async def run():
            nc = await nats.connect(self.nats.url)
            js = nc.jetstream()
            stored = delivered = acked = 0
            try:
                for stream in await js.streams_info():
                    stored += stream.state.last_seq
                    for consumer in await js.consumers_info(stream.config.name):
                        delivered += consumer.delivered.consumer_seq
                        acked += consumer.ack_floor.consumer_seq
            finally:
                await nc.close()
            return {"published": stored, "delivered": delivered, "acked": acked}

        return asyncio.run(run())

    def _redis(self) -> dict:
        import redis

        with redis.Redis.from_url(self.redis_url) as client:
            stats = client.info("commandstats")
        return {"commands": sum(v["calls"] for v in stats.values())}

    # -- a measured span -----------------------------------------------------------

    def start(self, roles: dict[str, list], *, servers: dict[str, int | None]) -> None:
        """`roles`: name -> the Popen objects measured; `servers`: name -> pid (None: not ours to measure)."""
        self.servers = {name: pid for name, pid in servers.items() if pid}
        self._cpu_before = self._cpu(roles)
        self.before = self.snapshot()

    def _cpu(self, roles: dict[str, list]) -> dict[str, float]:
        taken = {role: sum(process_cpu_ms(proc.pid) for proc in procs) for role, procs in roles.items()}
        return taken | {name: process_cpu_ms(pid) for name, pid in self.servers.items()}

    def take_cpu(self, roles: dict[str, list]) -> None:
        """Before the processes stop: CPU-ms by role (a role's processes summed) since `start`."""
        for role, ms in self._cpu(roles).items():
            self.cpu[role] = ms - self._cpu_before.get(role, 0.0)

    def per_order(self, orders: int) -> dict:
        after = self.snapshot()
        before = self.before
        n = max(orders, 1)
        tables = {}
        index_entries = 0
        rows = Counter()
        for table, (ins, upd, hot, dele, indexes) in after["tables"].items():
            b = before["tables"].get(table, (0, 0, 0, 0, indexes))
            d_ins, d_upd, d_hot, d_del = ins - b[0], upd - b[1], hot - b[2], dele - b[3]
            if d_ins or d_upd or d_del:
                tables[table] = {"inserted": d_ins / n, "updated": d_upd / n, "deleted": d_del / n}
            rows.update({"inserted": d_ins, "updated": d_upd, "deleted": d_del})
            index_entries += (d_ins + d_upd - d_hot) * indexes
        model = {
            "orders": orders,
            "commits": (after["commits"] - before["commits"]) / n,
            "rows": {k: v / n for k, v in rows.items()},
            "index_entries": index_entries / n,
            "tables": tables,
            "cpu_ms": {role: ms / n for role, ms in self.cpu.items()} | {"all": sum(self.cpu.values()) / n},
        }
        if "statements" in after:
            kinds = Counter(after["statements"])
            kinds.subtract(before.get("statements", {}))
            model["statements"] = {k: v / n for k, v in kinds.items() if v}
            model["statements"]["all"] = sum(v for v in kinds.values()) / n
            queries = Counter(after["queries"])
            queries.subtract(before.get("queries", {}))
            # The statements that cost the most calls: where the redesign looks first.
            model["top_statements"] = [[calls / n, " ".join(q.split())[:160]] for q, calls in queries.most_common(TOP)]
        else:
            model["statements"] = None
        for broker in ("nats", "redis"):
            if broker in after:
                model[broker] = {k: (after[broker][k] - before[broker].get(k, 0)) / n for k in after[broker]}
        return model


def postgres_pid(embedded) -> int | None:
    """The embedded server's postmaster (its backends are its children); None for a shared server."""
    if embedded is None:
        return None
    return int((embedded.data / "postmaster.pid").read_text().split()[0])


def redis_pid(url: str) -> int | None:
    """redis-server's pid when it runs on this machine (its CPU read from /proc), else None."""
    import redis

    with redis.Redis.from_url(url) as client:
        pid = client.info("server").get("process_id")
    return pid if pid and Path(f"/proc/{pid}").exists() else None
